"""``hep2 bench``: pipeline throughput for the models alone and for the whole path through the service.

* models alone: ``analyze_field`` in this process on fields held in memory (the limit);
* end to end: the same fields uploaded to the configured storage, registered through the broker by a real
  worker process, analysed, results committed to the database, overlays uploaded; timed from the first
  upload to the last committed result, after one warm-up field so model loading is not counted.

Both run on the same hardware with the same fields; the ratio is end-to-end / models-alone.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from hep2.settings import get_settings
from hep2.synthetic import SYNTHETIC_PATTERNS, synthetic_png


def bench_fields(count: int, size: tuple[int, int], data_dir: Path | None) -> list[tuple[str, bytes]]:
    """Real field images from ``data_dir`` (cycled) or SYNTHETIC ones of ``size``."""
    if data_dir is not None:
        files = sorted(p for p in data_dir.iterdir() if p.suffix.lower() in {".png", ".tif", ".tiff", ".jpg"})
        return [(f"{i:03d}-{files[i % len(files)].name}", files[i % len(files)].read_bytes()) for i in range(count)]
    return [(f"{i:03d}-SYNTHETIC.png", synthetic_png(SYNTHETIC_PATTERNS[i % 5], seed=i, size=size, cells=40))
            for i in range(count)]


def models_alone(fields: list[tuple[str, bytes]]) -> dict[str, Any]:
    from db.session import session_scope
    from hep2.storage import storage_from_settings
    from workers.model_cache import ModelCache
    from workers.pipeline.analyze import analyze_field

    with session_scope() as session:  # the models a worker would use now (registry, pins, settings)
        models = ModelCache().get(session, storage_from_settings(), get_settings())
    analyze_field(fields[0][1], models)  # warm-up: load the models
    started = time.perf_counter()
    stages: dict[str, float] = {}
    for _, data in fields:
        for stage, ms in analyze_field(data, models).timings_ms.items():
            stages[stage] = stages.get(stage, 0.0) + ms
    seconds = time.perf_counter() - started
    return {"fields": len(fields), "seconds": round(seconds, 3), "fields_per_s": round(len(fields) / seconds, 3),
            "mean_stage_ms": {k: round(v / len(fields), 1) for k, v in stages.items()},
            "model_versions": models.versions()}


def end_to_end(fields: list[tuple[str, bytes]], log_dir: Path, timeout_s: float = 3600.0) -> dict[str, Any]:
    from hep2.storage import storage_from_settings
    from workers.celery_app import create_celery_app
    from workers.jobs import wait_for_final
    from workers.process import worker_process

    storage, app = storage_from_settings(), create_celery_app()
    run = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    prefix = f"{get_settings().inbox_prefix}bench-{run}/"
    node = f"bench-{os.getpid()}@{socket.gethostname()}"
    env = {k: v for k, v in os.environ.items() if k.startswith("HEP2_")}
    with worker_process(app, env, node, log_dir / "bench-worker.log"):
        warm = prefix + "warm-up.png"
        storage.put(warm, fields[0][1])
        app.send_task("hep2.register_upload", args=[warm])
        wait_for_final([warm], timeout_s)
        started = time.perf_counter()
        keys = []
        for name, data in fields:
            keys.append(prefix + name)
            storage.put(keys[-1], data)
            app.send_task("hep2.register_upload", args=[keys[-1]])  # what the S3 event triggers
        statuses = wait_for_final(keys, timeout_s)
        seconds = time.perf_counter() - started
    outcome: dict[str, int] = {}
    for status in statuses.values():
        outcome[status.value] = outcome.get(status.value, 0) + 1
    return {"fields": len(fields), "seconds": round(seconds, 3), "fields_per_s": round(len(fields) / seconds, 3),
            "worker_processes": 1, "statuses": outcome}


def environment() -> dict[str, Any]:
    settings = get_settings()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "host": platform.node(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__,
            "database": settings.resolved_database_url.split("://")[0],
            "broker": settings.resolved_broker_url.split("://")[0], "storage": settings.storage_backend,
            "worker": socket.gethostname()}


def run_bench(count: int, size: tuple[int, int], data_dir: Path | None, out: Path) -> dict[str, Any]:
    """Measure both paths on the same fields; in embedded mode the service state goes to ``var/bench``."""
    if not get_settings().database_url:
        import shutil

        state = Path("var/bench").resolve()
        shutil.rmtree(state, ignore_errors=True)
        os.environ["HEP2_STATE_DIR"] = str(state)
        get_settings.cache_clear()
        from db.migrate import upgrade

        upgrade()
    fields = bench_fields(count, size, data_dir)
    report: dict[str, Any] = {"environment": environment(),
                              "inputs": str(data_dir) if data_dir else f"SYNTHETIC fields {size[0]}x{size[1]}"}
    report["models_alone"] = models_alone(fields)
    report["end_to_end"] = end_to_end(fields, out.parent)
    report["ratio"] = round(report["end_to_end"]["fields_per_s"] / report["models_alone"]["fields_per_s"], 3)
    out.write_text(json.dumps(report, indent=2))
    return report
