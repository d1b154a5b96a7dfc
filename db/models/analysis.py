"""What an analysis produced: attempts (with timings and model versions), cells and specimen results."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, ForeignKey, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.base import Base, CreatedAt, enum_column, utcnow

if TYPE_CHECKING:
    from db.models.registry import ModelVersion
    from db.models.specimens import SlideImage


class AttemptOutcome(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    FAILED = "failed"


attempt_model_versions = Table(
    "attempt_model_versions",
    Base.metadata,
    Column("attempt_id", ForeignKey("analysis_attempts.id", ondelete="CASCADE"), primary_key=True),
    Column("model_version_id", ForeignKey("model_versions.id", ondelete="RESTRICT"), primary_key=True),
)


class AnalysisAttempt(Base):
    """One run of the pipeline on a slide image by one worker (a redelivered task is a new attempt)."""

    __tablename__ = "analysis_attempts"
    __table_args__ = (UniqueConstraint("slide_image_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    slide_image_id: Mapped[int] = mapped_column(ForeignKey("slide_images.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer, comment="1, 2, ... per slide image")
    task_id: Mapped[str | None] = mapped_column(String(64), comment="Celery task id")
    worker: Mapped[str | None] = mapped_column(String(255), comment="Celery worker hostname")
    outcome: Mapped[AttemptOutcome] = mapped_column(enum_column(AttemptOutcome, "attempt_outcome"),
                                                    default=AttemptOutcome.RUNNING)
    error: Mapped[str | None] = mapped_column(Text)
    stage_timings_ms: Mapped[dict[str, Any] | None] = mapped_column(comment='{"decode": 12.5, ...}')
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    slide: Mapped[SlideImage] = relationship(back_populates="attempts")
    model_versions: Mapped[list[ModelVersion]] = relationship(secondary=attempt_model_versions)
    cells: Mapped[list[Cell]] = relationship(back_populates="attempt", order_by="Cell.index")
    result: Mapped[SpecimenResult | None] = relationship(back_populates="attempt")


class Cell(Base):
    """One segmented cell and what the classifier said about it."""

    __tablename__ = "cells"
    __table_args__ = (UniqueConstraint("attempt_id", "index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("analysis_attempts.id", ondelete="CASCADE"))
    slide_image_id: Mapped[int] = mapped_column(ForeignKey("slide_images.id", ondelete="CASCADE"), index=True)
    index: Mapped[int] = mapped_column(Integer, comment="instance number within the attempt")
    bbox_x: Mapped[int]
    bbox_y: Mapped[int]
    bbox_w: Mapped[int]
    bbox_h: Mapped[int]
    centroid_x: Mapped[float]
    centroid_y: Mapped[float]
    area_px: Mapped[int]
    mean_intensity: Mapped[float | None]
    probabilities: Mapped[dict[str, Any]] = mapped_column(comment="pattern -> probability")
    predicted_pattern: Mapped[str] = mapped_column(String(32), index=True)
    confidence: Mapped[float]
    mitotic: Mapped[bool] = mapped_column(default=False)

    attempt: Mapped[AnalysisAttempt] = relationship(back_populates="cells")


class SpecimenResult(CreatedAt, Base):
    """The specimen-level reading of one slide image by one attempt; reviews never overwrite it."""

    __tablename__ = "specimen_results"
    id: Mapped[int] = mapped_column(primary_key=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("analysis_attempts.id", ondelete="CASCADE"),
                                            unique=True)
    slide_image_id: Mapped[int] = mapped_column(ForeignKey("slide_images.id", ondelete="CASCADE"), index=True)
    intensity_class: Mapped[str] = mapped_column(String(16), comment="negative/intermediate/positive")
    intensity_index: Mapped[float]
    pattern: Mapped[str] = mapped_column(String(32), index=True)
    icap_code: Mapped[str | None] = mapped_column(String(32))
    confidence: Mapped[float]
    second_pattern: Mapped[str | None] = mapped_column(String(32))
    second_confidence: Mapped[float | None]
    cell_count: Mapped[int]
    needs_review: Mapped[bool] = mapped_column(default=False, index=True)
    review_reason: Mapped[str | None] = mapped_column(Text)
    overlay_key: Mapped[str | None] = mapped_column(
        String(1024), comment="the overlay PNG; with overlay_layer_key: rendered there on first request")
    overlay_layer_key: Mapped[str | None] = mapped_column(
        String(1024), comment="the overlay layer (analysis/overlay.py); NULL: overlay_key was made by the worker")
    quality: Mapped[dict[str, Any] | None] = mapped_column(
        comment="image-quality gate: noise, focus, saturation, nuclei seen (analysis/quality.py)")

    attempt: Mapped[AnalysisAttempt] = relationship(back_populates="result")
    slide: Mapped[SlideImage] = relationship(back_populates="results")
