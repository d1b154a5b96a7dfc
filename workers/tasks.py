"""Celery tasks. Thin wrappers: they open a session and storage, then call plain functions."""

from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError
from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError

from db.session import session_scope
from hep2.settings import get_settings
from hep2.storage import ObjectNotFoundError, storage_from_settings
from workers.celery_app import celery_app
from workers.ingest import is_sidecar, register_upload
from workers.maintenance import unregistered_keys

log: logging.Logger = get_task_logger(__name__)

TRANSIENT_ERRORS = (BotoCoreError, OperationalError, ConnectionError, TimeoutError)
"""Faults of the storage, database or network that a retry with backoff may cure."""


@celery_app.task(name="hep2.register_upload", autoretry_for=TRANSIENT_ERRORS,
                 retry_backoff=True, retry_backoff_max=300, max_retries=8)
def register_upload_task(key: str) -> dict[str, object]:
    """Record an uploaded image (idempotent). Returns the slide id and whether it was new."""
    storage = storage_from_settings()
    if is_sidecar(key):
        return {"key": key, "skipped": "sidecar (read together with its image)"}
    try:
        with session_scope() as session:
            slide, created = register_upload(session, storage, key)
            result = {"key": key, "slide_id": slide.id, "created": created, "status": slide.status.value}
    except ObjectNotFoundError:
        log.warning("object %s vanished before it could be registered", key)
        return {"key": key, "skipped": "object no longer exists"}
    log.info("registered %s as slide %s (new: %s)", key, result["slide_id"], created)
    return result


@celery_app.task(name="hep2.sweep_inbox")
def sweep_inbox_task() -> dict[str, object]:
    """Register uploads whose events were lost: list the inbox, queue what the database lacks."""
    settings = get_settings()
    storage = storage_from_settings(settings)
    with session_scope() as session:
        missing = unregistered_keys(session, storage, settings.inbox_prefix)
    for key in missing:
        register_upload_task.delay(key)
    return {"queued": missing}
