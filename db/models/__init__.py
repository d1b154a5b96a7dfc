"""All tables of the service; import from here."""

from db.base import Base
from db.models.access import ApiKey, AuditEvent, Review, Role
from db.models.analysis import AnalysisAttempt, AttemptOutcome, Cell, SpecimenResult, attempt_model_versions
from db.models.registry import (
    TRAINABLE_TASKS,
    Dataset,
    FoldMetrics,
    ModelStage,
    ModelTask,
    ModelVersion,
    RunStatus,
    TrainingRun,
)
from db.models.reports import LisOutbox, OutboxStatus, Report, ReportStatus
from db.models.specimens import (
    ALLOWED_TRANSITIONS,
    InvalidTransitionError,
    Patient,
    SlideImage,
    SlideStatus,
    Specimen,
)

__all__ = [
    "ALLOWED_TRANSITIONS", "TRAINABLE_TASKS", "AnalysisAttempt", "ApiKey", "AttemptOutcome", "AuditEvent", "Base",
    "Cell", "Dataset", "FoldMetrics", "InvalidTransitionError", "LisOutbox", "ModelStage", "ModelTask",
    "ModelVersion", "OutboxStatus", "Patient", "Report", "ReportStatus", "Review", "Role", "RunStatus",
    "SlideImage", "SlideStatus", "Specimen", "SpecimenResult", "TrainingRun", "attempt_model_versions",
]
