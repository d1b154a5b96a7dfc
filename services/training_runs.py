"""Training runs on the service: start (queue ``training``) and cancel."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

import workers.celery_app as broker
from db import audit
from db.models import ModelTask, RunStatus, TrainingRun
from services import ConflictError, NotFoundError
from workers.routing import TaskName


def start_run(session: Session, task: ModelTask | str, actor: str, parameters: dict[str, Any] | None,
              trigger: str) -> TrainingRun:
    """Create a queued run, commit, send ``hep2.train_model`` and store its Celery task id.

    Unknown or invalid parameters raise :class:`ValueError` (nothing is stored)."""
    from training.retrain import start_training  # imports torch: kept off the API's start-up

    try:
        run = start_training(session, task, actor=actor, trigger=trigger, parameters=parameters)
    except (TypeError, ValueError):
        session.rollback()
        raise
    session.commit()
    result = broker.celery_client().send_task(TaskName.TRAIN_MODEL, args=[run.id])
    if getattr(result, "id", None):
        run.celery_task_id = result.id
        session.commit()
    return run


def cancel_run(session: Session, run_id: int, actor: str) -> TrainingRun:
    """Ask a queued or running run to stop at its next epoch (audited); a run that has ended: conflict."""
    run = session.scalar(select(TrainingRun).where(TrainingRun.id == run_id).with_for_update())
    if run is None:
        raise NotFoundError(f"training run {run_id} not found")
    if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
        session.rollback()
        raise ConflictError(f"training run {run_id} is {run.status.value}")
    run.cancel_requested = True
    audit.record(session, actor, "training.cancel", "training_run", run_id)
    session.commit()
    return run
