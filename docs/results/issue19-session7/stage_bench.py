"""Per-field stage times of ``analyze_field`` on the first 8 AGH fields, one process, 1 torch/OpenCV thread.

    PYTHONPATH=<code tree> python stage_bench.py {old|new} OUT.json [classifier weights]

``old``: a tree from before the layers issue (``workers.pipeline.analyze``, e.g. ``git archive 8641889``);
``new``: this tree (``analysis.analyze``). One warm-up field, then every field once; the JSON has per-field
``timings_ms``, their sum, wall and CPU time, and the calls (intensity, pattern, review, cells).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
import cv2
import torch

FIELDS = Path(os.environ.get("HEP2_SHARED_DATA", "/work/shared/data")) / "agh-fields"


def main(which: str, out: str, classifier: str | None) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    if which == "old":
        from workers.pipeline.analyze import Models, analyze_field
    else:
        from analysis.analyze import Models, analyze_field
    fields = sorted(FIELDS.glob("*.png"))[:8]
    models = Models(classifier_weights=classifier) if classifier else Models()
    analyze_field(fields[0].read_bytes(), models)  # warm-up: model loading is not counted
    rows = []
    for path in fields:
        data = path.read_bytes()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = analyze_field(data, models)
        wall, cpu = (time.perf_counter() - wall0) * 1000, (time.process_time() - cpu0) * 1000
        timings = dict(result.timings_ms)
        rows.append({"field": path.name, "timings_ms": timings, "sum_ms": sum(timings.values()), "wall_ms": wall,
                     "cpu_ms": cpu, "intensity": result.intensity.intensity_class,
                     "pattern": result.specimen.pattern, "needs_review": result.specimen.needs_review,
                     "n_cells": len(result.cells)})
    summary = {"median_sum_ms": statistics.median(r["sum_ms"] for r in rows),
               "median_cpu_ms": statistics.median(r["cpu_ms"] for r in rows),
               "stages": {k: statistics.median(r["timings_ms"].get(k, 0) for r in rows) for k in rows[0]["timings_ms"]},
               "load": os.getloadavg(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(out, "w") as f:
        json.dump({"which": which, "classifier": classifier, "rows": rows, "summary": summary}, f, indent=1)
    print(which, classifier, json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
