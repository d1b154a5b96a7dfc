"""Celery tasks. Thin wrappers: they open a session and storage, then call plain functions."""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from time import perf_counter
from typing import Any

import cv2
import torch
from botocore.exceptions import BotoCoreError
from celery import Task
from celery.signals import worker_process_init
from celery.utils.log import get_task_logger
from sqlalchemy.exc import OperationalError

from analysis.config import load_config
from db.models import ModelTask, SlideStatus
from db.session import session_scope
from hep2.settings import get_settings
from hep2.storage import InvalidKeyError, ObjectNotFoundError, storage_from_settings
from training.retrain import due_for_retraining, run_training, start_training
from workers import jobs, lis, reports
from workers.celery_app import create_celery_app
from workers.ingest import is_sidecar, register_upload
from workers.maintenance import stale_training_runs, sweep_inbox
from workers.model_cache import ModelCache
from workers.persist import run_claimed_analysis
from workers.process import THREADS_ENV
from workers.routing import TaskName

celery_app = create_celery_app()
"""The worker's app (``hep2 worker`` runs it); senders use :func:`workers.celery_app.celery_client`."""
log: logging.Logger = get_task_logger(__name__)

@worker_process_init.connect
def _set_torch_threads(**_: Any) -> None:
    """Each pool process uses the torch threads ``hep2 worker`` chose (one per core in all)."""
    threads = os.environ.get(THREADS_ENV)
    if threads:
        torch.set_num_threads(int(threads))
        cv2.setNumThreads(int(threads))  # the segmentation's OpenCV calls


TRANSIENT_ERRORS = (BotoCoreError, OperationalError, ConnectionError, TimeoutError)
"""Faults of the storage, database or network that a retry with backoff may cure."""


@celery_app.task(name=TaskName.REGISTER_UPLOAD, autoretry_for=TRANSIENT_ERRORS,
                 retry_backoff=True, retry_backoff_max=300, max_retries=8)
def register_upload_task(key: str) -> dict[str, object]:
    """Record an uploaded image once and queue its analysis (idempotent)."""
    storage = storage_from_settings()
    if is_sidecar(key):
        return {"key": key, "skipped": "sidecar (read together with its image)"}
    try:
        with session_scope() as session:
            slide, created = register_upload(session, storage, key)
            if created and slide.status is SlideStatus.RECEIVED:
                slide.transition(SlideStatus.QUEUED)
            session.flush()
            result = {"key": key, "slide_id": slide.id, "created": created, "status": slide.status.value}
    except ObjectNotFoundError:
        log.warning("object %r vanished before it could be registered", key)
        return {"key": key, "skipped": "object no longer exists"}
    except InvalidKeyError as exc:  # the inbox sweep records such objects as rejected slides
        log.warning("object key %r cannot be registered: %s", key, exc)
        return {"key": key, "skipped": str(exc)}
    if created and result["status"] == SlideStatus.QUEUED.value:
        # After the commit: a lost send leaves the slide queued, and requeue_stale re-sends it.
        analyze_slide.delay(result["slide_id"])
    log.info("registered %r as slide %s (new: %s)", key, result["slide_id"], created)
    return result


@celery_app.task(name=TaskName.SWEEP_INBOX)
def sweep_inbox_task() -> dict[str, object]:
    """Register uploads whose events were lost: list the inbox, queue what the database lacks; objects that
    can never be registered (unsafe keys) become rejected slides."""
    settings = get_settings()
    storage = storage_from_settings(settings)
    with session_scope() as session:
        swept = sweep_inbox(session, storage, settings.inbox_prefix)
    for key in swept.missing:
        register_upload_task.delay(key)
    return {"queued": swept.missing, "rejected": swept.rejected}


@celery_app.task(name=TaskName.REQUEUE_STALE)
def requeue_stale_task() -> dict[str, object]:
    """Re-send analyses and training runs whose message was lost (broker restart) or whose worker died without
    redelivery, each at most once per ``HEP2_REQUEUE_AFTER_S``; fail training runs long past their limit."""
    settings = get_settings()
    resend_after = timedelta(seconds=settings.requeue_after_s)
    with session_scope() as session:
        stale = jobs.stale_slides(session, queued_after=resend_after,
                                  running_after=timedelta(seconds=settings.task_time_limit_s))
        runs = stale_training_runs(session, resend_after,
                                   dead_after=timedelta(seconds=settings.training_time_limit_s + 600))
    for slide_id in stale:
        analyze_slide.delay(slide_id)
    for run_id in runs.resend:
        train_model_task.delay(run_id)
    return {"requeued": stale, "training_resent": runs.resend, "training_failed": runs.failed}


class AnalysisTask(Task):
    """Records retries and final failures on the slide, so no job ends silently."""

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        with session_scope() as session:
            jobs.abort(session, args[0], task_id, f"retrying after {type(exc).__name__}: {exc}",
                       SlideStatus.QUEUED)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        with session_scope() as session:
            jobs.abort(session, args[0], task_id, f"{type(exc).__name__}: {exc}", SlideStatus.FAILED)


_model_cache = ModelCache()
"""The pipeline's models, per worker process: loaded once, kept warm, reloaded when production changes."""


@celery_app.task(bind=True, base=AnalysisTask, name=TaskName.ANALYZE_SLIDE, autoretry_for=TRANSIENT_ERRORS,
                 retry_backoff=True, retry_backoff_max=120, max_retries=5)
def analyze_slide(self: Task, slide_id: int) -> dict[str, object]:
    """Download, run the pipeline, store everything in one transaction; bad input is rejected, not retried."""

    settings = get_settings()
    storage = storage_from_settings(settings)
    with session_scope() as session:
        claim = jobs.claim(session, slide_id, self.request.id, self.request.hostname or "?",
                           stale_after=timedelta(seconds=settings.task_time_limit_s),
                           max_worker_deaths=settings.max_worker_deaths)
    if isinstance(claim, str):
        log.info("analyze_slide(%s) skipped: %s", slide_id, claim)
        return {"slide_id": slide_id, "skipped": claim}
    config = load_config(settings.pipeline_config)  # one read per slide: its segmenter and rules agree
    with session_scope() as session:  # after the claim's commit: a model that fails to load fails the attempt
        models = _model_cache.get(session, storage, settings, config)
    started = perf_counter()
    outcome = run_claimed_analysis(claim, storage, models, config)
    log.info("slide %s: %s in %.0f ms", slide_id, outcome, (perf_counter() - started) * 1000)
    if outcome.get("status") != "superseded":
        update_report.delay(slide_id)  # after the results' commit: the specimen report includes this image
    return {"slide_id": slide_id, **outcome}



@celery_app.task(bind=True, name=TaskName.TRAIN_MODEL, soft_time_limit=get_settings().training_time_limit_s - 60,
                 time_limit=get_settings().training_time_limit_s)
def train_model_task(self: Task, run_id: int) -> dict[str, object]:
    """Run a queued training run (queue ``training``); a duplicate never restarts a running run."""
    return run_training(run_id, storage_from_settings(), task_id=self.request.id)


@celery_app.task(name=TaskName.SCHEDULED_RETRAIN)
def scheduled_retrain_task(trigger: str = "schedule", parameters: dict | None = None) -> dict[str, object]:
    """Beat: start a run on schedule, or when enough new reviewed labels exist (``trigger="labels"``).

    ``parameters`` default to ``HEP2_RETRAIN_PARAMETERS``."""
    settings = get_settings()
    with session_scope() as session:
        reason = due_for_retraining(session, trigger, settings.retrain_min_new_labels)
        if reason is None:
            return {"started": None}
        run = start_training(session, ModelTask.CELL_PATTERN, actor="beat",
                             parameters=parameters or settings.retrain_parameters, trigger=trigger)
        run_id = run.id
    train_model_task.delay(run_id)
    return {"started": run_id, "reason": reason}


@celery_app.task(name=TaskName.UPDATE_REPORT, autoretry_for=TRANSIENT_ERRORS, retry_backoff=True,
                 retry_backoff_max=120, max_retries=8)
def update_report(slide_id: int) -> dict[str, object]:
    """Recompute the report of the slide's specimen (idempotent; a signed-out version becomes an amendment
    draft when its content changes)."""
    config = load_config(get_settings().pipeline_config).report
    with session_scope() as session:
        report = reports.recompute_for_slide(session, slide_id, config)
        if report is None:
            return {"slide_id": slide_id, "skipped": "no such slide"}
        return {"slide_id": slide_id, "report_id": report.id, "version": report.version,
                "status": report.status.value}


@celery_app.task(bind=True, name=TaskName.SEND_TO_LIS, max_retries=None)
def send_to_lis(self: Task, outbox_id: int) -> dict[str, object]:
    """Send one outbox message to the LIS over MLLP; retried with exponential backoff until it is ACKed."""
    settings = get_settings()
    try:
        with session_scope() as session:
            outcome = lis.deliver(session, outbox_id, settings)
    except lis.LisError as exc:
        delay = lis.backoff_s(self.request.retries, settings)
        log.warning("LIS delivery of outbox %s failed (%s); retry in %.0f s", outbox_id, exc, delay)
        raise self.retry(exc=exc, countdown=delay) from exc
    log.info("LIS delivery of outbox %s: %s", outbox_id, outcome)
    return {"outbox_id": outbox_id, "outcome": outcome}


@celery_app.task(name=TaskName.FLUSH_LIS_OUTBOX)
def flush_lis_outbox_task() -> dict[str, object]:
    """Beat: re-send outbox messages whose retry is overdue (a lost retry chain); nothing waits forever."""
    settings = get_settings()
    with session_scope() as session:
        ids = lis.overdue(session, settings)
    for outbox_id in ids:
        send_to_lis.delay(outbox_id)
    return {"queued": ids}
