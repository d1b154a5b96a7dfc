"""``hep2 demo``: the service's main job on embedded defaults, with nothing installed.

SQLite database, a local folder as the bucket and a SQLite broker under ``var/demo``; a real worker
subprocess runs the same Celery tasks as production. Images from ``--input`` (or SYNTHETIC fields made by
:mod:`hep2.synthetic`) are uploaded to the inbox, each upload becomes a task, and the results are
printed and written to ``var/demo/report.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from sqlalchemy import select

from hep2.settings import get_settings
from hep2.synthetic import SYNTHETIC_PATTERNS, synthetic_png

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}


def demo_inputs(input_dir: Path | None) -> list[tuple[str, bytes]]:
    """(name, bytes) of the images to process: the folder's, or synthetic fields (named as such)."""
    if input_dir is None:
        return [(f"SYNTHETIC-{p.value}.png", synthetic_png(p, seed=i)) for i, p in enumerate(SYNTHETIC_PATTERNS)]
    files = sorted(f for f in input_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {input_dir}")
    return [(f.name, f.read_bytes()) for f in files]


def run_demo(input_dir: Path | None, state_dir: Path, timeout_s: float = 300.0) -> dict[str, object]:
    """Process the inputs through the embedded service and return the report."""
    shutil.rmtree(state_dir, ignore_errors=True)  # a demo starts from nothing; only its own folder
    env = {"HEP2_STATE_DIR": str(state_dir.resolve()), "HEP2_STORAGE_BACKEND": "local",
           "HEP2_DATABASE_URL": "", "HEP2_BROKER_URL": "", "HEP2_RESULT_BACKEND": ""}
    os.environ.update(env)
    get_settings.cache_clear()

    from db.migrate import upgrade
    from db.models import SlideImage
    from db.session import session_scope
    from hep2.storage import storage_from_settings
    from workers.celery_app import create_celery_app
    from workers.process import worker_process

    upgrade()
    storage, app = storage_from_settings(), create_celery_app()
    inputs = demo_inputs(input_dir)
    started = time.monotonic()
    with worker_process(app, env, f"demo-{os.getpid()}@{socket.gethostname()}", state_dir / "worker.log"):
        keys = []
        for name, data in inputs:
            key = f"{get_settings().inbox_prefix}demo/{name}"
            storage.put(key, data)  # a scanner's upload; the event it would trigger is the task below
            keys.append(key)
        pending = [app.send_task("hep2.register_upload", args=[key]) for key in keys]
        for result in pending:
            result.get(timeout=timeout_s)
    elapsed = time.monotonic() - started

    with session_scope() as session:
        slides = session.scalars(select(SlideImage).where(SlideImage.key.in_(keys)).order_by(SlideImage.key))
        rows = [{"image": s.key.rsplit("/", 1)[-1], "synthetic": input_dir is None, "bytes": s.size_bytes,
                 "sha256": s.sha256, "status": s.status.value, "reason": s.status_reason} for s in slides]
    report = {"inputs": str(input_dir) if input_dir else "synthetic fields made by hep2.synthetic",
              "state_dir": str(state_dir), "seconds": round(elapsed, 2), "slides": rows}
    (state_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def print_report(report: dict[str, object]) -> None:
    rows = report["slides"]
    assert isinstance(rows, list)
    print(f"{'image':<36} {'status':<10} {'bytes':>9}  sha256")
    for row in rows:
        print(f"{row['image']:<36} {row['status']:<10} {row['bytes']:>9}  {row['sha256'][:16]}")
    if rows and rows[0]["synthetic"]:
        print("NOTE: these images are SYNTHETIC (drawn by hep2.synthetic), not real specimens.")
    print(f"{len(rows)} slide(s) registered in {report['seconds']} s; report: {report['state_dir']}/report.json")
    print("Analysis (segmentation, intensity, patterns) is added to this job by the pipeline issues.")
