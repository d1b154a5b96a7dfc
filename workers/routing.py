"""Task names, queues and routes: constants that senders (API, CLI, services) import without building the
Celery app (which connects a broker and creates broker folders)."""

from __future__ import annotations

from enum import StrEnum


class TaskName(StrEnum):
    """The registered name of every Celery task."""

    ANALYZE_SLIDE = "hep2.analyze_slide"
    REGISTER_UPLOAD = "hep2.register_upload"
    SWEEP_INBOX = "hep2.sweep_inbox"
    REQUEUE_STALE = "hep2.requeue_stale"
    TRAIN_MODEL = "hep2.train_model"
    SCHEDULED_RETRAIN = "hep2.scheduled_retrain"
    UPDATE_REPORT = "hep2.update_report"
    SEND_TO_LIS = "hep2.send_to_lis"
    FLUSH_LIS_OUTBOX = "hep2.flush_lis_outbox"


QUEUES = ("gpu", "cpu", "training", "lis")
TASK_ROUTES: dict[str, dict[str, str]] = {
    TaskName.ANALYZE_SLIDE: {"queue": "gpu"},
    TaskName.REGISTER_UPLOAD: {"queue": "cpu"},
    TaskName.SWEEP_INBOX: {"queue": "cpu"},
    TaskName.REQUEUE_STALE: {"queue": "cpu"},
    TaskName.TRAIN_MODEL: {"queue": "training"},
    TaskName.SCHEDULED_RETRAIN: {"queue": "cpu"},
    TaskName.UPDATE_REPORT: {"queue": "cpu"},
    TaskName.SEND_TO_LIS: {"queue": "lis"},
    TaskName.FLUSH_LIS_OUTBOX: {"queue": "cpu"},
}
