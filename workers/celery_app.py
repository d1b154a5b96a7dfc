"""The Celery application factory: queues, routing and the reliability settings every task relies on.

Importing this module builds nothing: the worker's app is built in :mod:`workers.tasks` (with its tasks),
senders get a cached client from :func:`celery_client`. Names and routes live in :mod:`workers.routing`.

Queues: ``gpu`` (slide analysis, one task at a time per GPU), ``cpu`` (ingestion, maintenance) and
``training`` (model training). Tasks are acknowledged only after they finish (``acks_late``) and are
redelivered if the worker process dies (``reject_on_worker_lost``), so every task must be idempotent.
"""

from __future__ import annotations

from datetime import timedelta
from functools import cache

from celery import Celery
from celery.schedules import crontab
from kombu import Exchange, Queue

from hep2.settings import Settings, get_settings
from workers.routing import QUEUES, TASK_ROUTES, TaskName


def create_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("hep2", broker=settings.resolved_broker_url, backend=settings.resolved_result_backend,
                 include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_queue="cpu",
        task_default_exchange="cpu",
        task_default_routing_key="cpu",
        task_routes={str(name): route for name, route in TASK_ROUTES.items()},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a GPU worker takes one slide at a time; others wait in the queue
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        result_expires=timedelta(days=1),
        task_track_started=True,
        worker_send_task_events=True,  # for Flower
        task_send_sent_event=True,
        beat_schedule={
            "sweep-inbox": {"task": TaskName.SWEEP_INBOX, "schedule": settings.sweep_interval_s},
            "requeue-stale": {"task": TaskName.REQUEUE_STALE, "schedule": settings.sweep_interval_s},
            "retrain-scheduled": {"task": TaskName.SCHEDULED_RETRAIN, "schedule": _cron(settings.retrain_cron),
                                  "args": ["schedule"]},
            "retrain-new-labels": {"task": TaskName.SCHEDULED_RETRAIN, "schedule": settings.sweep_interval_s,
                                   "args": ["labels"]},
            "lis-outbox": {"task": TaskName.FLUSH_LIS_OUTBOX, "schedule": settings.lis_retry_max_s},
        },
        timezone="UTC",
    )
    return app


def _cron(expression: str) -> crontab:
    minute, hour, day_of_month, month, day_of_week = expression.split()
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month,
                   day_of_week=day_of_week)


def celery_client(settings: Settings | None = None) -> Celery:
    """A Celery app for *sending* tasks, one per broker/backend (the API and CLI reuse its connections)."""
    settings = settings or get_settings()
    return _client(settings.resolved_broker_url, settings.resolved_result_backend)


@cache
def _client(broker_url: str, result_backend: str) -> Celery:
    return create_celery_app(get_settings())


def _transport_options(settings: Settings) -> dict[str, object]:
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://")):
        # Redis redelivers an unacknowledged task after this long; it must outlast the longest task.
        return {"visibility_timeout": settings.visibility_timeout_s or settings.training_time_limit_s + 600}
    if url.startswith("filesystem://"):
        # Embedded mode: messages are files in state_dir/broker (it supports broadcast, so pings work).
        folders = {name: (settings.state_dir / "broker" / name).resolve() for name in ("messages", "control")}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        return {"data_folder_in": str(folders["messages"]), "data_folder_out": str(folders["messages"]),
                "control_folder": str(folders["control"]), "store_processed": False}
    return {}

