"""Issue 19, session 8: the CNN's forward pass per field, main's inference path (old) vs this branch's (new).

The crops of the first 8 AGH fields are captured through ``analyze_field`` with the default (fused) models
(DOT-2 is negative: no cells classified), then ``CellClassifier.predict_array`` of each path runs on them,
old and new back to back per field (the order alternating by field and round), one thread, CPU time
(``time.process_time``, user + system). Old = ``analysis/models/inference.py`` as committed on ``main``
(``git show``), loaded as its own module.
Run: ``PYTHONPATH=<tree> python docs/results/issue19-session8/bench_forward.py OUT.json [rounds]``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

torch.set_num_threads(1)
cv2.setNumThreads(1)

from analysis.analyze import Models, analyze_field  # noqa: E402
from analysis.device import hardware  # noqa: E402
from analysis.models.fused import cnn_of, load_cell_classifier  # noqa: E402
from analysis.models.inference import CellClassifier  # noqa: E402

FIELDS = sorted(Path(os.environ.get("AGH", "/work/shared/data/agh-fields")).glob("*.png"))[:8]


def old_module():
    """main's inference.py as a separate module (its CellClassifier is the old path)."""
    src = subprocess.run(["git", "show", "main:analysis/models/inference.py"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3]).stdout
    path = Path(tempfile.mkdtemp()) / "old_inference.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_inference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def capture() -> list[tuple[str, np.ndarray]]:
    captured: list[np.ndarray] = []
    original = CellClassifier.predict_array

    def spy(self, x):
        captured.append(x.copy())
        return original(self, x)

    CellClassifier.predict_array = spy
    try:
        models = Models(classifier=load_cell_classifier())
        out = []
        for f in FIELDS:
            n = len(captured)
            analyze_field(f.read_bytes(), models, title=f.stem)
            out += [(f.stem, x) for x in captured[n:]]
    finally:
        CellClassifier.predict_array = original
    return out


def main() -> None:
    out_path, rounds = Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3
    batches = capture()
    new = cnn_of(load_cell_classifier())
    old = old_module().CellClassifier(new.weights, device="cpu")
    paths = {"old": old, "new": new}
    for clf in paths.values():  # warm-up: every batch shape once
        for _, x in batches:
            clf.predict_array(x)
    times: dict[str, list[list[float]]] = {"old": [], "new": []}
    system: dict[str, list[float]] = {"old": [], "new": []}
    faults: dict[str, list[float]] = {"old": [], "new": []}
    outs: dict[str, list[np.ndarray]] = {"old": [], "new": []}
    for r in range(rounds):
        for name in paths:
            times[name].append([])
            system[name].append(0.0)
            faults[name].append(0.0)
        for i, (_, x) in enumerate(batches):  # old and new back to back per field, the order alternating
            order = ("old", "new") if (r + i) % 2 == 0 else ("new", "old")
            for name in order:
                sys0, flt0 = os.times().system, resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t = time.process_time()
                p = paths[name].predict_array(x)
                times[name][-1].append((time.process_time() - t) * 1000)
                system[name][-1] += (os.times().system - sys0) * 1000 / len(batches)
                faults[name][-1] += (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - flt0) / len(batches)
                if r == 0:
                    outs[name].append(p)
    probs = {k: np.concatenate(v) for k, v in outs.items()}
    mean = {k: [float(np.mean(v)) for v in vs] for k, vs in times.items()}
    result = {
        "protocol": "CellClassifier.predict_array on the crops of the first 8 AGH fields (7 with cells), "
                    "old = main's inference.py, new = this tree; old and new back to back per field, order "
                    "alternating, 1 thread, time.process_time per field, ms",
        "hardware": hardware(), "fields": [name for name, _ in batches],
        "cells": [len(x) for _, x in batches], "rounds": rounds, "per_field_ms": times,
        "mean_per_field_ms": mean, "system_ms_per_field": system, "minor_faults_per_field": faults,
        "ratio_new_over_old_per_round": [n / o for n, o in zip(mean["new"], mean["old"], strict=True)],
        "median_ratio_per_round": float(np.median([n / o for n, o in zip(mean["new"], mean["old"], strict=True)])),
        "max_abs_dp_new_vs_old": float(np.abs(probs["new"] - probs["old"]).max()),
        "argmax_agreement_new_vs_old": float((probs["new"].argmax(1) == probs["old"].argmax(1)).mean()),
    }
    out_path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "per_field_ms"}, indent=1))


if __name__ == "__main__":
    main()
