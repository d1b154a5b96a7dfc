"""The analysis job's life cycle on the database: claim, finish, reject, fail, re-queue.

Celery may deliver a task more than once (late acks, redelivery after a worker dies, a re-queue by the
maintenance sweep). These functions make that safe: a slide is claimed under a row lock, only by a
message that finds it ``queued``, by the redelivery of the same message (the previous holder died), or
once the holder's time limit has passed. Every attempt is a row, so the history stays visible. A slide
whose analysis killed (or outlived) its worker ``HEP2_MAX_WORKER_DEATHS`` times is failed, not run again.
Staleness is measured on the database's clock (:func:`db.base.db_now`), never a worker's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from db.base import db_now, utcnow
from db.models import AnalysisAttempt, AttemptOutcome, SlideImage, SlideStatus
from db.session import session_scope

FINAL_STATES = frozenset({SlideStatus.DONE, SlideStatus.NEEDS_REVIEW, SlideStatus.REJECTED})


@dataclass(frozen=True)
class Claim:
    slide_id: int
    attempt_id: int
    attempt_number: int
    key: str
    sidecar: dict | None
    exposure_ms: float | None
    etag: str = ""
    version_id: str | None = None
    sha256: str | None = None


def claim(session: Session, slide_id: int, task_id: str, worker: str, stale_after: timedelta,
          max_worker_deaths: int = 3) -> Claim | str:
    """Start an attempt on the slide, or return why this message must not run it.

    The attempt of a holder that died (this very message redelivered) or outlived its time limit is closed
    as abandoned and counted; after ``max_worker_deaths`` such deaths the slide is failed with the reason
    instead of being run again (an input that crashes the worker must not loop)."""
    now = db_now(session)
    slide = session.scalar(select(SlideImage).where(SlideImage.id == slide_id).with_for_update())
    if slide is None:
        return f"slide {slide_id} does not exist"
    if slide.status in FINAL_STATES or slide.status is SlideStatus.RECEIVED:
        return f"slide {slide_id} is {slide.status.value}"
    if slide.status is SlideStatus.FAILED:
        return f"slide {slide_id} failed; re-run it explicitly"
    current = _latest_attempt(session, slide_id)
    if slide.status is SlideStatus.RUNNING:
        same_message = current is not None and current.task_id == task_id
        expired = slide.started_at is not None and slide.started_at < now - stale_after
        if not (same_message or expired):
            return f"slide {slide_id} is running elsewhere ({current.worker if current else '?'})"
        if current is not None and current.outcome is AttemptOutcome.RUNNING:
            _close(current, AttemptOutcome.FAILED, "abandoned: the worker died or exceeded its time limit", now)
        slide.worker_deaths = (slide.worker_deaths or 0) + 1
        if slide.worker_deaths >= max_worker_deaths:
            reason = (f"worker died {slide.worker_deaths} times while analysing this slide (last on "
                      f"{current.worker if current else '?'}); not retried. Re-run it once the cause is fixed")
            slide.transition(SlideStatus.FAILED, reason, at=now)
            return reason
        slide.transition(SlideStatus.QUEUED, at=now)
    slide.transition(SlideStatus.RUNNING, at=now)
    attempt = AnalysisAttempt(slide_image_id=slide_id, number=(current.number + 1 if current else 1),
                              task_id=task_id, worker=worker, started_at=now)
    session.add(attempt)
    session.flush()
    return Claim(slide_id, attempt.id, attempt.number, slide.key, slide.sidecar, slide.exposure_ms,
                 slide.etag, slide.version_id, slide.sha256)


def owned_attempt(session: Session, claim_: Claim) -> tuple[SlideImage, AnalysisAttempt] | None:
    """The slide and attempt, locked, if this attempt still holds the slide (else another took over)."""
    slide = session.scalar(select(SlideImage).where(SlideImage.id == claim_.slide_id).with_for_update())
    attempt = session.get(AnalysisAttempt, claim_.attempt_id)
    if slide is None or attempt is None or slide.status is not SlideStatus.RUNNING:
        return None
    if attempt.outcome is not AttemptOutcome.RUNNING or _latest_attempt(session, slide.id) is not attempt:
        return None
    return slide, attempt


def finish_attempt(session: Session, claim_: Claim, outcome: AttemptOutcome, status: SlideStatus,
                   reason: str | None = None, timings_ms: dict[str, float] | None = None) -> bool:
    """Close the attempt and move the slide to ``status``; False if the attempt no longer holds it."""
    owned = owned_attempt(session, claim_)
    if owned is None:
        return False
    close_owned(*owned, outcome, status, reason, timings_ms)
    return True


def close_owned(slide: SlideImage, attempt: AnalysisAttempt, outcome: AttemptOutcome, status: SlideStatus,
                reason: str | None = None, timings_ms: dict[str, float] | None = None) -> None:
    """:func:`finish_attempt` for a caller that holds ``(slide, attempt)`` from :func:`owned_attempt` in this
    transaction (the rows stay locked until it commits)."""
    _close(attempt, outcome, reason if outcome is not AttemptOutcome.SUCCEEDED else None)
    if timings_ms is not None:
        attempt.stage_timings_ms = timings_ms
    slide.transition(status, reason)


def abort(session: Session, slide_id: int, task_id: str, error: str, to: SlideStatus) -> bool:
    """Close this message's running attempt with ``error`` and move the slide to ``to`` (queued to retry,
    failed when retries are exhausted). False if this message holds no running attempt on the slide."""
    slide = session.scalar(select(SlideImage).where(SlideImage.id == slide_id).with_for_update())
    attempt = _latest_attempt(session, slide_id)
    if slide is None or attempt is None or attempt.task_id != task_id or slide.status is not SlideStatus.RUNNING:
        return False
    _close(attempt, AttemptOutcome.FAILED, error)
    slide.transition(to, error if to is SlideStatus.FAILED else None)
    return True


def requeue(session: Session, slide_id: int) -> SlideImage:
    """Put a failed (or finished) slide back in the queue; the caller sends the task after commit."""
    slide = session.scalar(select(SlideImage).where(SlideImage.id == slide_id).with_for_update())
    if slide is None:
        raise LookupError(f"slide {slide_id} does not exist")
    slide.transition(SlideStatus.QUEUED, at=db_now(session))
    slide.worker_deaths = 0  # an explicit re-run starts counting afresh
    return slide


def stale_slides(session: Session, queued_after: timedelta, running_after: timedelta) -> list[int]:
    """Slides whose message may have been lost, to be sent again: queued for ``queued_after``, or running
    past ``running_after`` (the time limit), and not already re-sent within ``queued_after``.

    ``queued_at`` is stamped now (database clock) on the slides returned, so each is re-sent at most once
    per stale period however often the sweep runs and however many sweeps run at once (row locks, skip
    locked)."""
    now = db_now(session)
    resend_before = now - queued_after
    ids = list(session.scalars(select(SlideImage.id).where(
        SlideImage.queued_at < resend_before,
        (SlideImage.status == SlideStatus.QUEUED)
        | ((SlideImage.status == SlideStatus.RUNNING) & (SlideImage.started_at < now - running_after)))
        .order_by(SlideImage.id).with_for_update(skip_locked=True)))
    if ids:
        session.execute(update(SlideImage).where(SlideImage.id.in_(ids)).values(queued_at=now),
                        execution_options={"synchronize_session": False})
    return ids


def _latest_attempt(session: Session, slide_id: int) -> AnalysisAttempt | None:
    return session.scalar(select(AnalysisAttempt).where(AnalysisAttempt.slide_image_id == slide_id)
                          .order_by(AnalysisAttempt.number.desc()).limit(1))


def _close(attempt: AnalysisAttempt, outcome: AttemptOutcome, error: str | None,
           at: datetime | None = None) -> None:
    attempt.outcome = outcome
    attempt.error = error
    attempt.finished_at = at or utcnow()


def slide_statuses(session: Session, keys: list[str]) -> dict[str, SlideStatus]:
    """key -> status of the slides registered under ``keys`` (absent keys are missing)."""
    rows = session.execute(select(SlideImage.key, SlideImage.status).where(SlideImage.key.in_(keys)))
    return {key: status for key, status in rows}


def succeeded_timings(session: Session, keys: list[str]) -> list[dict[str, float]]:
    """``stage_timings_ms`` of the succeeded attempts of the slides registered under ``keys``."""
    rows = session.scalars(select(AnalysisAttempt.stage_timings_ms).join(SlideImage).where(
        SlideImage.key.in_(keys), AnalysisAttempt.outcome == AttemptOutcome.SUCCEEDED))
    return [dict(t) for t in rows if t]


def wait_for_final(keys: list[str], timeout_s: float, poll_s: float = 0.5) -> dict[str, SlideStatus]:
    """Poll until every key has a slide in a final state (done, needs_review, rejected, failed)."""
    final = FINAL_STATES | {SlideStatus.FAILED}
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope() as session:
            current = slide_statuses(session, keys)
        if len(current) == len(keys) and set(current.values()) <= final:
            return current
        if time.monotonic() > deadline:
            pending = {k: (current[k].value if k in current else "unregistered") for k in keys
                       if current.get(k) not in final}
            raise TimeoutError(f"not finished after {timeout_s:.0f} s: {pending}")
        time.sleep(poll_s)
