"""Housekeeping that beat schedules: find uploads the database lacks, and training runs whose message was lost."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.orm import Session

from db.base import db_now
from db.models import RunStatus, SlideImage, TrainingRun
from hep2.storage import InvalidKeyError, ObjectInfo, ObjectStorage, validate_key
from workers.ingest import is_sidecar, record_unreadable

SWEEP_BATCH = 500


@dataclass
class SweepResult:
    missing: list[str] = field(default_factory=list)
    """Keys to register (their current (key, etag) has no slide row)."""
    rejected: list[str] = field(default_factory=list)
    """Keys recorded as rejected here (they can never be registered, e.g. a newline in the key)."""


def sweep_inbox(session: Session, storage: ObjectStorage, prefix: str) -> SweepResult:
    """Keys under ``prefix`` (images, not sidecars) whose current (key, etag) has no slide row; an object whose
    key is unsafe becomes a ``rejected`` slide with the reason (once), so it shows in the failures list and
    is not queued again by every sweep."""
    result = SweepResult()
    candidates: list[ObjectInfo] = []
    for obj in storage.list(prefix):
        if is_sidecar(obj.key):
            continue
        try:
            validate_key(obj.key)
        except InvalidKeyError as exc:
            _, created = record_unreadable(session, storage.bucket, obj, f"cannot be registered: {exc}")
            if created:
                result.rejected.append(obj.key)
            continue
        candidates.append(obj)
    for start in range(0, len(candidates), SWEEP_BATCH):
        batch = [(obj.key, obj.etag) for obj in candidates[start:start + SWEEP_BATCH]]
        known = set(session.execute(
            select(SlideImage.key, SlideImage.etag).where(
                SlideImage.bucket == storage.bucket,
                tuple_(SlideImage.key, SlideImage.etag).in_(batch))).all())
        result.missing.extend(key for key, etag in batch if (key, etag) not in known)
    return result


@dataclass
class StaleRuns:
    resend: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def stale_training_runs(session: Session, resend_after: timedelta, dead_after: timedelta) -> StaleRuns:
    """Training runs whose message was lost: ``queued`` runs not sent for ``resend_after`` are re-sent
    (``sent_at`` stamped, so once per period; a duplicate never restarts a running run, see
    :func:`training.retrain.claim_run`); ``running`` runs older than ``dead_after`` (their hard time limit
    and the broker's redelivery are long past) are failed with the reason. Database clock."""
    now = db_now(session)
    out = StaleRuns()
    last_sent = func.coalesce(TrainingRun.sent_at, TrainingRun.created_at)
    out.resend = list(session.scalars(select(TrainingRun.id).where(
        TrainingRun.status == RunStatus.QUEUED, last_sent < now - resend_after)
        .order_by(TrainingRun.id).with_for_update(skip_locked=True)))
    if out.resend:
        session.execute(update(TrainingRun).where(TrainingRun.id.in_(out.resend)).values(sent_at=now),
                        execution_options={"synchronize_session": False})
    limit_s = int(dead_after.total_seconds())
    out.failed = list(session.scalars(select(TrainingRun.id).where(
        TrainingRun.status == RunStatus.RUNNING, TrainingRun.started_at < now - dead_after)
        .with_for_update(skip_locked=True)))
    if out.failed:
        session.execute(update(TrainingRun).where(TrainingRun.id.in_(out.failed)).values(
            status=RunStatus.FAILED, finished_at=now,
            error=f"still running after {limit_s} s, past its time limit: the training worker died or its "
                  "message was lost; start a new run"), execution_options={"synchronize_session": False})
    return out
