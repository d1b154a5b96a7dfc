"""All 23 AGH fields through ``analyze_field`` with the default models: calls and every cell, as JSON.

    PYTHONPATH=<code tree> python agh_calls.py OUT.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import torch

from analysis.analyze import Models, analyze_field

FIELDS = Path(os.environ.get("HEP2_SHARED_DATA", "/work/shared/data")) / "agh-fields"


def main(out: str) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    models, calls = Models(), {}
    for path in sorted(FIELDS.glob("*.png")):
        result = analyze_field(path.read_bytes(), models)
        spec = result.specimen
        calls[path.name] = {
            "pattern": spec.pattern, "intensity": result.intensity.intensity_class, "icap": spec.icap,
            "needs_review": spec.needs_review, "reasons": spec.reasons,
            "nuclei": result.quality.nuclei if result.quality else None,
            "cells": [[c.label, c.pattern, None if c.probabilities is None else [float(p) for p in c.probabilities]]
                      for c in result.cells]}
    Path(out).write_text(json.dumps(calls))


if __name__ == "__main__":
    main(sys.argv[1])
