"""Housekeeping that beat schedules: find uploads the database lacks."""

from __future__ import annotations

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from db.models import SlideImage
from hep2.storage import ObjectStorage
from workers.ingest import is_sidecar

SWEEP_BATCH = 500


def unregistered_keys(session: Session, storage: ObjectStorage, prefix: str) -> list[str]:
    """Keys under ``prefix`` (images, not sidecars) whose current (key, etag) has no slide row."""
    candidates = [(obj.key, obj.etag) for obj in storage.list(prefix) if not is_sidecar(obj.key)]
    missing: list[str] = []
    for start in range(0, len(candidates), SWEEP_BATCH):
        batch = candidates[start:start + SWEEP_BATCH]
        known = set(session.execute(
            select(SlideImage.key, SlideImage.etag).where(
                SlideImage.bucket == storage.bucket,
                tuple_(SlideImage.key, SlideImage.etag).in_(batch))).all())
        missing.extend(key for key, etag in batch if (key, etag) not in known)
    return missing
