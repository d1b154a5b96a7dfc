"""Analysis jobs: re-run a slide, sweep the inbox and stale jobs now."""

from __future__ import annotations

from sqlalchemy.orm import Session

import workers.celery_app as broker
from db import audit
from db.models import InvalidTransitionError, SlideImage
from services import ConflictError, NotFoundError
from workers import jobs
from workers.routing import TaskName


def rerun(session: Session, slide_id: int, actor: str) -> SlideImage:
    """Queue a failed (or finished) slide again, audited; rejected input stays rejected (conflict)."""
    try:
        slide = jobs.requeue(session, slide_id)
    except LookupError as exc:
        raise NotFoundError(str(exc)) from exc
    except InvalidTransitionError as exc:
        raise ConflictError(str(exc)) from exc
    audit.record(session, actor, "job.rerun", "slide_image", slide_id, key=slide.key)
    session.commit()
    broker.celery_client().send_task(TaskName.ANALYZE_SLIDE, args=[slide_id])
    return slide


def sweep_now() -> list[str]:
    """Queue the inbox sweep and the stale-job re-queue now (beat also runs them on a schedule)."""
    client = broker.celery_client()
    sent = [TaskName.SWEEP_INBOX, TaskName.REQUEUE_STALE]
    for task in sent:
        client.send_task(task)
    return [str(t) for t in sent]
