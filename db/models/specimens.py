"""Patients, specimens and the uploaded slide-well images with their processing state machine."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.base import Base, CreatedAt, enum_column, utcnow

if TYPE_CHECKING:
    from db.models.analysis import AnalysisAttempt, SpecimenResult


class Patient(CreatedAt, Base):
    """A patient known only by the pseudonymised id the lab sends; never a name."""

    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(primary_key=True)
    pseudo_id: Mapped[str] = mapped_column(String(64), unique=True)
    specimens: Mapped[list[Specimen]] = relationship(back_populates="patient")


class Specimen(CreatedAt, Base):
    """One patient sample (serum); it may be imaged in several wells or dilutions."""

    __tablename__ = "specimens"
    id: Mapped[int] = mapped_column(primary_key=True)
    accession: Mapped[str | None] = mapped_column(String(64), unique=True, comment="lab's specimen id")
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id", ondelete="RESTRICT"), index=True)
    patient: Mapped[Patient | None] = relationship(back_populates="specimens")
    slides: Mapped[list[SlideImage]] = relationship(back_populates="specimen")


class SlideStatus(enum.StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    NEEDS_REVIEW = "needs_review"
    REJECTED = "rejected"
    FAILED = "failed"


ALLOWED_TRANSITIONS: dict[SlideStatus, frozenset[SlideStatus]] = {
    SlideStatus.RECEIVED: frozenset({SlideStatus.QUEUED, SlideStatus.REJECTED}),
    SlideStatus.QUEUED: frozenset({SlideStatus.RUNNING, SlideStatus.REJECTED, SlideStatus.FAILED}),
    # running -> queued: a worker died or the job timed out and is re-queued.
    SlideStatus.RUNNING: frozenset({SlideStatus.DONE, SlideStatus.NEEDS_REVIEW, SlideStatus.REJECTED,
                                    SlideStatus.FAILED, SlideStatus.QUEUED}),
    SlideStatus.FAILED: frozenset({SlideStatus.QUEUED}),  # ops re-run
    SlideStatus.DONE: frozenset({SlideStatus.QUEUED}),  # re-analysis with a new model
    SlideStatus.NEEDS_REVIEW: frozenset({SlideStatus.QUEUED}),
    SlideStatus.REJECTED: frozenset(),  # bad input stays rejected; upload a corrected file
}

_STATUS_TIMESTAMP = {
    SlideStatus.QUEUED: "queued_at",
    SlideStatus.RUNNING: "started_at",
    SlideStatus.DONE: "finished_at",
    SlideStatus.NEEDS_REVIEW: "finished_at",
    SlideStatus.REJECTED: "finished_at",
    SlideStatus.FAILED: "finished_at",
}


class InvalidTransitionError(ValueError):
    """A status change the state machine does not allow."""


class SlideImage(CreatedAt, Base):
    """One uploaded slide-well image: the unit of analysis. Recorded once per (bucket, key, etag)."""

    __tablename__ = "slide_images"
    __table_args__ = (
        UniqueConstraint("bucket", "key", "etag"),
        CheckConstraint("size_bytes >= 0", name="size_non_negative"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    specimen_id: Mapped[int | None] = mapped_column(ForeignKey("specimens.id", ondelete="RESTRICT"),
                                                    index=True)
    bucket: Mapped[str] = mapped_column(String(63))
    key: Mapped[str] = mapped_column(String(1024))
    etag: Mapped[str] = mapped_column(String(128))
    version_id: Mapped[str | None] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True, comment="set once the bytes are read")
    # sidecar metadata (JSON next to the image: same key + ".json")
    well: Mapped[str | None] = mapped_column(String(16))
    dilution: Mapped[str | None] = mapped_column(String(16), comment='e.g. "1:160"')
    exposure_ms: Mapped[float | None]
    kit_lot: Mapped[str | None] = mapped_column(String(64))
    scanner: Mapped[str | None] = mapped_column(String(128))
    sidecar: Mapped[dict[str, Any] | None] = mapped_column(comment="the sidecar's validated fields (never raw)")
    # state machine
    status: Mapped[SlideStatus] = mapped_column(enum_column(SlideStatus, "slide_status"),
                                                default=SlideStatus.RECEIVED, index=True)
    status_reason: Mapped[str | None] = mapped_column(Text, comment="why rejected/failed, readable")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(comment="when its analysis was last sent")
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    worker_deaths: Mapped[int] = mapped_column(default=0, server_default=text("0"),
                                               comment="attempts abandoned since the last explicit re-run")

    specimen: Mapped[Specimen | None] = relationship(back_populates="slides")
    attempts: Mapped[list[AnalysisAttempt]] = relationship(back_populates="slide",
                                                           order_by="AnalysisAttempt.number")
    results: Mapped[list[SpecimenResult]] = relationship(back_populates="slide", order_by="SpecimenResult.id")

    def transition(self, to: SlideStatus, reason: str | None = None, at: datetime | None = None) -> None:
        """Move to ``to`` if the state machine allows it; stamp the matching timestamp with ``at`` (the
        database's clock, :func:`db.base.db_now`, where timestamps are compared across workers) or now."""
        current = self.status or SlideStatus.RECEIVED  # a new, unflushed row has no status yet
        if to not in ALLOWED_TRANSITIONS[current]:
            raise InvalidTransitionError(f"slide {self.id}: {current.value} -> {to.value} is not allowed")
        self.status = to
        self.status_reason = reason
        now = at or utcnow()
        if to in _STATUS_TIMESTAMP:
            setattr(self, _STATUS_TIMESTAMP[to], now)
        if to is SlideStatus.QUEUED:
            self.started_at = self.finished_at = None
        self.updated_at = now
