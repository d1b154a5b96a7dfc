"""Model registry, training runs with per-fold metrics, and registered datasets."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.base import Base, CreatedAt, enum_column


class ModelTask(enum.StrEnum):
    CELL_PATTERN = "cell_pattern"
    SEGMENTATION = "segmentation"
    INTENSITY = "intensity"
    SPECIMEN_PATTERN = "specimen_pattern"


TRAINABLE_TASKS: tuple[ModelTask, ...] = (ModelTask.CELL_PATTERN,)
"""Tasks a training run can be started for on the service (``training.retrain.start_training``)."""


class ModelStage(enum.StrEnum):
    CANDIDATE = "candidate"
    PRODUCTION = "production"
    ARCHIVED = "archived"


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Dataset(CreatedAt, Base):
    """A manifest CSV in object storage (i3a ``labels.csv`` format or the generic manifest)."""

    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    manifest_uri: Mapped[str] = mapped_column(String(1024))
    format: Mapped[str] = mapped_column(String(16), comment="i3a | manifest")
    sha256: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int]


class TrainingRun(CreatedAt, Base):
    """One training job: grouped CV, then a final fit; progress is updated while it runs."""

    __tablename__ = "training_runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[ModelTask] = mapped_column(enum_column(ModelTask, "model_task"))
    status: Mapped[RunStatus] = mapped_column(enum_column(RunStatus, "run_status"), default=RunStatus.QUEUED,
                                              index=True)
    trigger: Mapped[str] = mapped_column(String(16), comment="schedule | api | cli | labels")
    requested_by: Mapped[str | None] = mapped_column(String(128))
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    snapshot_sha256: Mapped[str | None] = mapped_column(String(64), comment="hash of the exact rows used")
    snapshot_uri: Mapped[str | None] = mapped_column(String(1024))
    snapshot_rows: Mapped[int | None]
    folds: Mapped[int | None]
    current_fold: Mapped[int | None]
    current_epoch: Mapped[int | None]
    progress_pct: Mapped[float] = mapped_column(default=0.0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    mean_metrics: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None] = mapped_column(comment="when hep2.train_model was last sent (database clock)")

    fold_metrics: Mapped[list[FoldMetrics]] = relationship(back_populates="run", order_by="FoldMetrics.fold")


class FoldMetrics(Base):
    """Test-fold metrics of one cross-validation fold, stored as soon as the fold finishes."""

    __tablename__ = "fold_metrics"
    __table_args__ = (UniqueConstraint("run_id", "fold"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"))
    fold: Mapped[int] = mapped_column(Integer)
    mean_class_accuracy: Mapped[float]
    accuracy: Mapped[float]
    metrics: Mapped[dict[str, Any]] = mapped_column(comment="per-class recall, confusion matrix, ...")
    test_groups: Mapped[list[Any]] = mapped_column(comment="specimen groups held out in this fold")
    finished_at: Mapped[datetime]

    run: Mapped[TrainingRun] = relationship(back_populates="fold_metrics")


class ModelVersion(CreatedAt, Base):
    """A trained artefact. At most one ``production`` version per task (partial unique index)."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("task", "version"),
        Index("uq_model_versions_one_production_per_task", "task", unique=True,
              postgresql_where=text("stage = 'production'"), sqlite_where=text("stage = 'production'")),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    task: Mapped[ModelTask] = mapped_column(enum_column(ModelTask, "model_task"))
    version: Mapped[str] = mapped_column(String(64))
    stage: Mapped[ModelStage] = mapped_column(enum_column(ModelStage, "model_stage"),
                                              default=ModelStage.CANDIDATE)
    stage_reason: Mapped[str | None] = mapped_column(Text, comment="why promoted / kept / archived")
    artifact_uri: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))  # identity: analysis.models.files.combined_sha256
    entry_file: Mapped[str | None] = mapped_column(
        String(255), comment="the file under artifact_uri the loader opens; NULL: weights.safetensors")
    files: Mapped[dict[str, Any] | None] = mapped_column(
        comment="artefact file name -> sha256, checked on fetch; NULL: the weights file alone (sha256)")
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    data_hash: Mapped[str | None] = mapped_column(String(64))
    code_version: Mapped[str | None] = mapped_column(String(64))
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id", ondelete="SET NULL"))
    promoted_at: Mapped[datetime | None]

    @property
    def family(self) -> str | None:
        """A cell classifier's family: ``fused`` (its entry file is a ``hep2-cell-ensemble/1`` JSON; a bundled
        one is registered as ``bundled:<json>+<members>``) or ``cnn``."""
        if self.task is not ModelTask.CELL_PATTERN:
            return None
        entry = (self.entry_file or self.artifact_uri.removeprefix("bundled:")).split("+")[0]
        return "fused" if entry.endswith(".json") else "cnn"
