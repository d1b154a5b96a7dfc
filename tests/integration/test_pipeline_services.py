"""Foundation end to end: an object put into the S3 endpoint -> a task on a real worker -> a PostgreSQL row."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from sqlalchemy import select

from db.models import Patient, SlideImage, SlideStatus
from db.session import session_scope
from hep2.storage import storage_from_settings
from workers.celery_app import create_celery_app

pytestmark = pytest.mark.integration


def test_upload_is_registered_by_real_worker(celery_worker: str) -> None:
    storage = storage_from_settings()
    image = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    key = "inbox/2026-11-22/well-A1.png"
    storage.put(key, image, "image/png")
    sidecar = {"patient_id": "P-00042", "specimen_id": "S-2026-001", "well": "A1", "dilution": "1:160",
               "exposure_ms": 250, "kit_lot": "LOT7", "scanner": "scope-3"}
    storage.put(key + ".json", json.dumps(sidecar).encode(), "application/json")

    app = create_celery_app()
    first = app.send_task("hep2.register_upload", args=[key]).get(timeout=60)
    again = app.send_task("hep2.register_upload", args=[key]).get(timeout=60)  # a repeated event

    assert first["created"] is True and again["created"] is False
    assert again["slide_id"] == first["slide_id"]
    with session_scope() as session:
        slides = session.scalars(select(SlideImage).where(SlideImage.key == key)).all()
        assert len(slides) == 1
        slide = slides[0]
        assert slide.sha256 == hashlib.sha256(image).hexdigest()
        assert slide.etag == storage.head(key).etag
        assert (slide.well, slide.dilution, slide.exposure_ms) == ("A1", "1:160", 250.0)
        assert slide.status is not SlideStatus.RECEIVED  # registered and queued for analysis at once
        assert slide.specimen is not None and slide.specimen.accession == "S-2026-001"
        assert session.scalar(select(Patient.pseudo_id).where(Patient.id == slide.specimen.patient_id)) == "P-00042"


def test_invalid_sidecar_is_rejected_with_reason(celery_worker: str) -> None:
    storage = storage_from_settings()
    key = "inbox/2026-11-22/well-B2.png"
    storage.put(key, b"\x89PNG\r\n\x1a\nnot-really", "image/png")
    storage.put(key + ".json", json.dumps({"patient_id": "Jane Doe", "dilution": "160"}).encode())

    result = create_celery_app().send_task("hep2.register_upload", args=[key]).get(timeout=60)

    assert result["status"] == "rejected"
    with session_scope() as session:
        slide = session.get(SlideImage, result["slide_id"])
        assert slide is not None and slide.status is SlideStatus.REJECTED
        assert "patient_id" in slide.status_reason and "dilution" in slide.status_reason


def test_sweep_registers_uploads_whose_events_were_lost(celery_worker: str) -> None:
    storage = storage_from_settings()
    keys = [f"inbox/lost/slide-{i}.png" for i in range(3)]
    for i, key in enumerate(keys):
        storage.put(key, f"image {i}".encode())

    app = create_celery_app()
    swept = app.send_task("hep2.sweep_inbox").get(timeout=60)
    assert set(keys) <= set(swept["queued"])

    registered: list[str] = []
    for _ in range(60):
        with session_scope() as session:
            registered = list(session.scalars(select(SlideImage.key).where(SlideImage.key.in_(keys))))
        if len(registered) == len(keys):
            break
        time.sleep(0.5)
    assert sorted(registered) == keys
    assert app.send_task("hep2.sweep_inbox").get(timeout=60)["queued"] == []
