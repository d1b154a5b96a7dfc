"""``hep2 demo``: the service's main job on embedded defaults, with nothing installed.

SQLite database, a local folder as the bucket and a file broker in the state folder: ``HEP2_STATE_DIR``
(default ``var``), the same folder ``hep2 api`` serves by default, so the dashboard opens on the demo's
results (the demo prints the command and a reviewer key). A real worker subprocess runs the same Celery
tasks as production. Images from ``--input`` (or SYNTHETIC fields made by :mod:`hep2.synthetic`) are
uploaded to the inbox (with ``NAME.json`` beside ``NAME.png`` uploaded first as its sidecar: specimen id,
dilution, ...); each upload is registered and analysed; the results are printed and written to
``<state>/report.json`` and ``report.html`` (with the overlays).

The demo starts from nothing, but it never deletes a folder it did not create: it wipes the state folder
only when the folder carries the marker file ``.hep2-demo`` that an earlier demo wrote; a non-empty folder
without it is refused (choose another ``--state-dir``).
"""

from __future__ import annotations

import html
import os
import shlex
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from db.migrate import upgrade
from db.models import SlideImage
from db.session import session_factory, session_scope
from hep2.jsonio import write_json
from hep2.settings import get_settings
from hep2.storage import storage_from_settings
from hep2.synthetic import SYNTHETIC_PATTERNS, synthetic_png
from services import overlays
from services import reports as report_service
from services.keys import create_key
from workers import reports
from workers.celery_app import create_celery_app
from workers.ingest import SIDECAR_SUFFIX
from workers.jobs import wait_for_final
from workers.process import worker_process
from workers.routing import TaskName

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}


def demo_inputs(input_dir: Path | None) -> list[tuple[str, bytes]]:
    """(name, bytes) of the images to process: the folder's, or synthetic fields (named as such)."""
    if input_dir is None:
        return [(f"SYNTHETIC-{p.value}.png", synthetic_png(p, seed=i)) for i, p in enumerate(SYNTHETIC_PATTERNS)]
    files = sorted(f for f in input_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {input_dir}")
    return [(f.name, f.read_bytes()) for f in files]


def demo_sidecar(input_dir: Path | None, name: str) -> bytes | None:
    """``NAME.json`` beside ``NAME.png`` in the input folder: the image's sidecar (specimen id, dilution, ...)."""
    if input_dir is None:
        return None
    sidecar = input_dir / (Path(name).stem + ".json")
    return sidecar.read_bytes() if sidecar.is_file() else None


MARKER = ".hep2-demo"


def prepare_state_dir(state_dir: Path) -> None:
    """An empty state folder for the demo, marked as the demo's: a folder with the marker (an earlier demo's)
    is wiped, a missing or empty one is created; any other folder is left alone and refused."""
    if state_dir.exists() and not state_dir.is_dir():
        raise SystemExit(f"{state_dir} is a file, not a folder")
    if state_dir.is_dir() and any(state_dir.iterdir()):
        if not (state_dir / MARKER).is_file():
            raise SystemExit(f"{state_dir} is not empty and was not created by hep2 demo (no {MARKER} file in it); "
                             "nothing was deleted. Use --state-dir (or HEP2_STATE_DIR) with a new folder.")
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / MARKER).write_text("written by hep2 demo: this folder may be wiped by the next demo\n")


def demo_key(role: str = "reviewer") -> str:
    """A new API key for the demo's dashboard (stored hashed in the demo's database; printed once)."""
    with session_factory()() as session:
        return create_key(session, "demo", role, "hep2 demo")[1]


def run_demo(input_dir: Path | None, state_dir: Path | None = None, timeout_s: float = 900.0) -> dict[str, Any]:
    """Process the inputs through the embedded service and return the report (``state_dir``: default the
    settings' ``HEP2_STATE_DIR``)."""
    state_dir = state_dir or get_settings().state_dir
    prepare_state_dir(state_dir)
    env = {"HEP2_STATE_DIR": str(state_dir.resolve()), "HEP2_STORAGE_BACKEND": "local",
           "HEP2_DATABASE_URL": "", "HEP2_BROKER_URL": "", "HEP2_RESULT_BACKEND": ""}
    os.environ.update(env)
    get_settings.cache_clear()
    upgrade()
    storage, app = storage_from_settings(), create_celery_app()
    inputs = demo_inputs(input_dir)
    keys = [f"{get_settings().inbox_prefix}demo/{name}" for name, _ in inputs]
    started = time.monotonic()
    with worker_process(app, env, f"demo-{os.getpid()}@{socket.gethostname()}", state_dir / "worker.log"):
        for key, (name, data) in zip(keys, inputs, strict=True):
            sidecar = demo_sidecar(input_dir, name)
            if sidecar is not None:  # before the image, as a scanner uploads it
                storage.put(key + SIDECAR_SUFFIX, sidecar, "application/json")
            storage.put(key, data)  # a scanner's upload; the event it would trigger is the task below
            app.send_task(TaskName.REGISTER_UPLOAD, args=[key])
        wait_for_final(keys, timeout_s)
        rows = _results(keys, storage)
        specimen_reports = _specimen_reports(keys)
    report = {"inputs": str(input_dir) if input_dir else "SYNTHETIC fields made by hep2.synthetic",
              "synthetic": input_dir is None, "state_dir": str(state_dir.resolve()),
              "dashboard_command": f"HEP2_STATE_DIR={shlex.quote(str(state_dir.resolve()))} hep2 api",
              "seconds": round(time.monotonic() - started, 2), "slides": rows,
              "reports": specimen_reports}
    _copy_overlays(rows, storage, state_dir)
    write_json(state_dir / "report.json", report)
    (state_dir / "report.html").write_text(_html(report))
    return {**report, "key": demo_key()}  # the key is printed, never written to the report


def _specimen_reports(keys: list[str]) -> list[dict[str, Any]]:
    """The specimen report of every accession among the uploads (images without one: a report each)."""
    out = []
    with session_scope() as session:
        slides = session.scalars(select(SlideImage).where(SlideImage.key.in_(keys)).order_by(SlideImage.id)).all()
        seen: set[int] = set()
        for slide in slides:
            specimen = slide.specimen or reports.specimen_of_slide(session, slide.id)
            if specimen is None or specimen.id in seen:
                continue
            seen.add(specimen.id)
            report = report_service.current(session, reports.accession_of(specimen))
            out.append(report_service.document(report, session))
    return out


def _results(keys: list[str], storage: Any) -> list[dict[str, Any]]:
    rows = []
    with session_scope() as session:
        for slide in session.scalars(select(SlideImage).where(SlideImage.key.in_(keys)).order_by(SlideImage.key)):
            result = slide.results[-1] if slide.results else None
            overlay_key, overlay_problem = overlays.overlay_or_problem(storage, slide, result)
            rows.append({
                "image": slide.key.rsplit("/", 1)[-1], "status": slide.status.value, "reason": slide.status_reason,
                "intensity": result.intensity_class if result else None,
                "intensity_index": round(result.intensity_index, 2) if result else None,
                "pattern": result.pattern if result else None, "icap": result.icap_code if result else None,
                "confidence": round(result.confidence, 3) if result else None,
                "second_pattern": result.second_pattern if result else None,
                "cells": result.cell_count if result else 0,
                "needs_review": result.review_reason if result and result.needs_review else None,
                "overlay_key": overlay_key, "overlay_problem": overlay_problem,
            })
    return rows


def _copy_overlays(rows: list[dict[str, Any]], storage: Any, state_dir: Path) -> None:
    folder = state_dir / "overlays"
    folder.mkdir(exist_ok=True)
    for row in rows:
        if row["overlay_key"]:
            target = folder / (Path(row["image"]).stem + ".png")
            target.write_bytes(storage.get(row["overlay_key"]))
            row["overlay"] = str(target.relative_to(state_dir))


def _html(report: dict[str, Any]) -> str:
    synthetic = "<p><b>SYNTHETIC images</b> drawn by hep2.synthetic, not real specimens.</p>"
    banner = synthetic if report["synthetic"] else ""
    cells = []
    for r in report["slides"]:
        img = (f'<img src="{html.escape(r["overlay"])}" width="480">' if r.get("overlay")
               else html.escape(r.get("overlay_problem") or ""))
        cells.append(f"<tr><td>{html.escape(r['image'])}</td><td>{r['status']}</td><td>{r['intensity'] or ''} "
                     f"({r['intensity_index']})</td><td>{r['pattern'] or ''} {r['icap'] or ''}</td>"
                     f"<td>{r['second_pattern'] or ''}</td><td>{r['cells']}</td>"
                     f"<td>{html.escape(r['needs_review'] or r['reason'] or '')}</td><td>{img}</td></tr>")
    return ("<!doctype html><meta charset=utf-8><title>hep2 demo report</title><h1>hep2 demo report</h1>"
            f"{banner}<p>{len(report['slides'])} slide(s) in {report['seconds']} s</p><table border=1 cellpadding=4>"
            "<tr><th>image<th>status<th>intensity<th>pattern<th>second<th>cells<th>review / reason<th>overlay"
            + "".join(cells) + "</table>")


def print_report(report: dict[str, Any]) -> None:
    header = f"{'image':<30} {'status':<12} {'intensity':<13} {'pattern':<17} {'ICAP':<10} {'second':<15} cells"
    print(header)
    for r in report["slides"]:
        print(f"{r['image'][:30]:<30} {r['status']:<12} {r['intensity'] or '-':<13} {r['pattern'] or '-':<17} "
              f"{r['icap'] or '-':<10} {r['second_pattern'] or '-':<15} {r['cells']:>5}")
        if r["needs_review"] or r["reason"]:
            print(f"{'':<30} review: {r['needs_review'] or r['reason']}")
    if report["synthetic"]:
        print("NOTE: these images are SYNTHETIC (drawn by hep2.synthetic), not real specimens.")
    for r in report.get("reports", []):
        patterns = ", ".join(f"{p['pattern']} ({p['icap']})" for p in r["patterns"]) or "-"
        print(f"report {r['accession']}: {r['result']}, titer {r['titer']['text'] or '-'}, pattern(s) {patterns}, "
              f"{len(r['images'])} image(s){'; needs review' if r['needs_review'] else ''}")
    print(f"{len(report['slides'])} slide(s) in {report['seconds']} s; "
          f"report: {report['state_dir']}/report.json and report.html")
    print(f"Dashboard on these results: {report['dashboard_command']}   then open http://127.0.0.1:8000/")
    if report.get("key"):
        print(f"  log in with this reviewer key (shown once): {report['key']}")
