"""The Celery application: queues, routing and the reliability settings every task relies on.

Queues: ``gpu`` (slide analysis, one task at a time per GPU), ``cpu`` (ingestion, maintenance) and
``training`` (model training). Tasks are acknowledged only after they finish (``acks_late``) and are
redelivered if the worker process dies (``reject_on_worker_lost``), so every task must be idempotent.
"""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from kombu import Queue

from hep2.settings import Settings, get_settings

TASK_ROUTES = {
    "hep2.analyze_slide": {"queue": "gpu"},
    "hep2.register_upload": {"queue": "cpu"},
    "hep2.sweep_inbox": {"queue": "cpu"},
    "hep2.train_model": {"queue": "training"},
}


def create_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("hep2", broker=settings.resolved_broker_url, backend=settings.resolved_result_backend,
                 include=["workers.tasks"])
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_queues=[Queue("gpu"), Queue("cpu"), Queue("training")],
        task_default_queue="cpu",
        task_routes=TASK_ROUTES,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a GPU worker takes one slide at a time; others wait in the queue
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        # Redis redelivers an unacknowledged task after this long; it must outlast the longest task.
        broker_transport_options={"visibility_timeout": settings.training_time_limit_s + 600},
        broker_connection_retry_on_startup=True,
        result_expires=timedelta(days=1),
        task_track_started=True,
        worker_send_task_events=True,  # for Flower
        task_send_sent_event=True,
        beat_schedule={
            "sweep-inbox": {"task": "hep2.sweep_inbox", "schedule": settings.sweep_interval_s},
        },
        timezone="UTC",
    )
    return app


celery_app = create_celery_app()
