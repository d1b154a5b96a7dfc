"""Issue 19, session 8: argmax agreement on all I3A cells of the CNN's inference paths vs fp32.

Reference: the checkpoint as trained (BatchNorm unfolded), eager, fp32, 8 dihedral views (``predict_proba``,
``precision="fp32"``). ``current``: main's ``CellClassifier`` (``git show main:analysis/models/inference.py``:
folded, bf16 autocast, one forward pass per chunk). ``new``: this tree's ``CellClassifier``. Chunks of 64
cells (512 images) as in ``issue19-i3a-bf16-agreement.json``; one thread; CPU seconds per path.
Run: ``PYTHONPATH=<tree> python docs/results/issue19-session8/i3a_agreement.py DATA OUT.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from analysis.models import DEFAULT_CELL_MODEL
from analysis.models.classifier import load_checkpoint
from analysis.models.inference import CellClassifier, predict_proba
from training.datasets import load_manifest

sys.path.insert(0, str(Path(__file__).parent))
from bench_forward import old_module

torch.set_num_threads(1)


def main() -> None:
    data, out = Path(sys.argv[1]), Path(sys.argv[2])
    trained, config = load_checkpoint(DEFAULT_CELL_MODEL)
    x = load_manifest(data).load(config.img_size, config.use_mask)
    paths = {
        "fp32_unfolded_eager": lambda a: predict_proba(trained, a, tta=8, batch_size=64, precision="fp32"),
        "current": old_module().CellClassifier(DEFAULT_CELL_MODEL, device="cpu", batch_size=64).predict_array,
        "new": CellClassifier(DEFAULT_CELL_MODEL, device="cpu", batch_size=64).predict_array,
    }
    probs, seconds = {}, {}
    for name, run in paths.items():
        t = time.process_time()
        probs[name] = run(x)
        seconds[name] = round(time.process_time() - t, 1)
    ref = probs["fp32_unfolded_eager"]
    result = {"cells": len(x), "torch_threads": 1, "chunk_cells": 64, "cpu_s": seconds}
    for name in ("current", "new"):
        agree = probs[name].argmax(1) == ref.argmax(1)
        result[name] = {"argmax_agreement_vs_fp32": float(agree.mean()), "disagreeing_cells": int((~agree).sum()),
                        "max_abs_prob_diff_vs_fp32": float(np.abs(probs[name] - ref).max())}
    result["new_vs_current"] = {
        "argmax_agreement": float((probs["new"].argmax(1) == probs["current"].argmax(1)).mean()),
        "max_abs_prob_diff": float(np.abs(probs["new"] - probs["current"]).max())}
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
