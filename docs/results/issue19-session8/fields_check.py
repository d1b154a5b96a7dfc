"""Issue 19, session 8: the 23 AGH fields through ``analyze_field`` with the default (fused) models, main's CNN
inference path (old) vs this tree's (new), in one process: specimen pattern, intensity, needs_review (and
each cell's pattern) must be identical. The old path is the fused model with its CNN member replaced by
main's ``CellClassifier`` (``git show main:analysis/models/inference.py``); everything else is this tree.
Run: ``PYTHONPATH=<tree> python docs/results/issue19-session8/fields_check.py OUT.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from analysis.analyze import Models, analyze_field
from analysis.models.fused import FusedCellClassifier, load_cell_classifier
from analysis.models.inference import CellClassifier

sys.path.insert(0, str(Path(__file__).parent))
from bench_forward import old_module

torch.set_num_threads(1)
cv2.setNumThreads(1)
FIELDS = sorted(Path(os.environ.get("AGH", "/work/shared/data/agh-fields")).glob("*.png"))


def old_classifier() -> FusedCellClassifier:
    clf = load_cell_classifier()
    assert isinstance(clf, FusedCellClassifier) and clf.cnn is not None
    old_cnn = old_module().CellClassifier(clf.cnn.weights, device="cpu")
    clf.members = [old_cnn if isinstance(m, CellClassifier) else m for m in clf.members]
    clf.cnn = old_cnn
    return clf


def calls(models: Models) -> dict[str, dict]:
    out = {}
    for f in FIELDS:
        a = analyze_field(f.read_bytes(), models, title=f.stem)
        probs = [c.probabilities for c in a.cells if c.probabilities]
        out[f.name] = {"pattern": a.specimen.pattern, "intensity": a.intensity.intensity_class,
                       "needs_review": a.specimen.needs_review, "reasons": a.specimen.reasons,
                       "cell_patterns": [c.pattern for c in a.cells], "_probs": np.array(probs)}
    return out


def main() -> None:
    old, new = calls(Models(classifier=old_classifier())), calls(Models(classifier=load_cell_classifier()))
    keys = ("pattern", "intensity", "needs_review")
    diffs = {f: {k: [old[f][k], new[f][k]] for k in (*keys, "reasons", "cell_patterns") if old[f][k] != new[f][k]}
             for f in old}
    max_dp = max((float(np.abs(old[f]["_probs"] - new[f]["_probs"]).max()) for f in old if len(old[f]["_probs"])),
                 default=0.0)
    result = {"fields": len(old), "identical_pattern_intensity_needs_review":
              all(old[f][k] == new[f][k] for f in old for k in keys),
              "identical_cell_patterns": all(old[f]["cell_patterns"] == new[f]["cell_patterns"] for f in old),
              "max_abs_fused_cell_prob_diff": max_dp, "differences": {f: d for f, d in diffs.items() if d},
              "calls": {f: {k: new[f][k] for k in keys} for f in new}}
    Path(sys.argv[1]).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "calls"}, indent=1))


if __name__ == "__main__":
    main()
