"""Per-slide time of the analysis task outside ``analyze_field`` (wall and CPU), against the real PostgreSQL,
Redis and a moto S3 server (environment from overhead.sh): what the worker adds to the models per slide."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import cv2
import torch

from db.migrate import upgrade
from hep2.storage import storage_from_settings
from workers import persist, tasks

FIELDS = Path(os.environ.get("HEP2_SHARED_DATA", "/work/shared/data")) / "agh-fields"


def main(count: int) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    upgrade()
    storage = storage_from_settings()
    keys = []
    for path in sorted(FIELDS.glob("*.png"))[:count]:
        keys.append(f"inbox/overhead/{path.name}")
        storage.put(keys[-1], path.read_bytes())
    slides = [tasks.register_upload_task(key)["slide_id"] for key in keys]
    inner = {"wall": 0.0, "cpu": 0.0}
    analyze = persist.analyze_field

    def timed(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return analyze(*args, **kwargs)
        finally:
            inner["wall"] += time.perf_counter() - wall
            inner["cpu"] += time.process_time() - cpu

    persist.analyze_field = timed
    tasks.analyze_slide(slides[0])  # warm-up: models
    inner.update(wall=0.0, cpu=0.0)
    wall, cpu = time.perf_counter(), time.process_time()
    for slide in slides[1:]:
        tasks.analyze_slide(slide)
    wall, cpu, n = time.perf_counter() - wall, time.process_time() - cpu, len(slides) - 1
    print(f"per slide: task wall {1000 * wall / n:.1f} ms, cpu {1000 * cpu / n:.1f}; analyze_field wall "
          f"{1000 * inner['wall'] / n:.1f}, cpu {1000 * inner['cpu'] / n:.1f}; outside it: wall "
          f"{1000 * (wall - inner['wall']) / n:.1f} ms, cpu {1000 * (cpu - inner['cpu']) / n:.1f} ms")


if __name__ == "__main__":
    main(int(os.environ.get("N", "12")))
