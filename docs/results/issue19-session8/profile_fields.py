"""pyinstrument profile of the first 8 AGH fields through ``analyze_field`` (default models, 1 thread, after
one warm-up field); the text goes to stdout."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import torch
from pyinstrument import Profiler

from analysis.analyze import Models, analyze_field

FIELDS = Path(os.environ.get("HEP2_SHARED_DATA", "/work/shared/data")) / "agh-fields"

if __name__ == "__main__":
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    fields = [p.read_bytes() for p in sorted(FIELDS.glob("*.png"))[:8]]
    models = Models()
    analyze_field(fields[0], models)
    profiler = Profiler(interval=0.0005)
    profiler.start()
    for data in fields:
        analyze_field(data, models)
    profiler.stop()
    print(profiler.output_text(unicode=False, color=False))
