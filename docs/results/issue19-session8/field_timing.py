"""Issue 19, session 8: whole fields through ``analyze_field`` (fused default), main's CNN path (old) vs this
branch's (new) in one process: CPU time per field (``time.process_time``) and the ``classify`` stage's wall
time, the first 8 AGH fields, old and new back to back per field (order alternating by field and round), one
thread (torch and OpenCV). Run: ``PYTHONPATH=<tree> python .../field_timing.py OUT.json [rounds]``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from analysis.analyze import Models, analyze_field
from analysis.device import hardware
from analysis.models.fused import load_cell_classifier

sys.path.insert(0, str(Path(__file__).parent))
from fields_check import FIELDS, old_classifier

torch.set_num_threads(1)
cv2.setNumThreads(1)


def main() -> None:
    out, rounds = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3
    models = {"old": Models(classifier=old_classifier()), "new": Models(classifier=load_cell_classifier())}
    fields = [(f.stem, f.read_bytes()) for f in FIELDS[:8]]
    for m in models.values():  # warm-up: models loaded, every batch shape once
        for name, data in fields:
            analyze_field(data, m, title=name)
    cpu = {k: [] for k in models}
    classify = {k: [] for k in models}
    for r in range(rounds):
        for k in models:
            cpu[k].append([])
            classify[k].append([])
        for i, (name, data) in enumerate(fields):
            for k in (("old", "new") if (r + i) % 2 == 0 else ("new", "old")):
                t = time.process_time()
                a = analyze_field(data, models[k], title=name)
                cpu[k][-1].append((time.process_time() - t) * 1000)
                classify[k][-1].append(a.timings_ms["classify"])
    med = {k: [float(np.median(v)) for v in vs] for k, vs in cpu.items()}
    result = {"protocol": __doc__.strip(), "hardware": hardware(), "fields": [n for n, _ in fields],
              "cpu_ms_per_field": cpu, "classify_wall_ms_per_field": classify,
              "median_cpu_ms_per_field_per_round": med,
              "median_classify_ms_per_round": {k: [float(np.median(v)) for v in vs] for k, vs in classify.items()},
              "ratio_new_over_old_per_round": [n / o for n, o in zip(med["new"], med["old"], strict=True)]}
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("median_cpu_ms_per_field_per_round", "median_classify_ms_per_round",
                                              "ratio_new_over_old_per_round")}, indent=1))


if __name__ == "__main__":
    main()
