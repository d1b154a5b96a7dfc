"""Issue 19, session 8: start-up cost per worker process of the old (main) and new CNN inference paths.

Each path in its own fresh process (``python startup.py old|new``): CPU seconds to build the
``CellClassifier`` (load, fold, bf16 cast, dense conversion), then ``predict_array`` on the crops of the
first 8 AGH fields (an ``.npz`` of their ``uint8 (N, 2, 48, 48)`` arrays, as ``bench_forward.py`` captures
them) three times: the first pass meets every batch shape for the first time (oneDNN creates its primitives),
the later ones reuse them; the difference is the per-new-shape cost a worker pays once per distinct shape.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    which, crops = sys.argv[1], np.load(sys.argv[2])
    batches = [crops[k] for k in crops.files]
    from bench_forward import old_module

    from analysis.models.inference import CellClassifier
    cls = old_module().CellClassifier if which == "old" else CellClassifier  # imports outside the timing
    t = time.process_time()
    clf = cls(device="cpu")
    build = time.process_time() - t
    passes = []
    for _ in range(3):
        t = time.process_time()
        for x in batches:
            clf.predict_array(x)
        passes.append((time.process_time() - t) * 1000 / len(batches))
    print(json.dumps({"path": which, "build_cpu_s": round(build, 3),
                      "ms_per_field_pass1_new_shapes": round(passes[0], 1),
                      "ms_per_field_pass2": round(passes[1], 1), "ms_per_field_pass3": round(passes[2], 1)}))


if __name__ == "__main__":
    main()
