"""Specimen reports (one row per version) and the LIS outbox (one HL7 message per signed-out version)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from db.base import Base, CreatedAt, enum_column, utcnow

if TYPE_CHECKING:
    from db.models.specimens import Specimen


class ReportStatus(enum.StrEnum):
    DRAFT = "draft"  # preliminary: recomputed in place until it is signed out
    FINAL = "final"  # the first signed-out version
    CORRECTED = "corrected"  # a signed-out amendment of an earlier signed-out version


class Report(CreatedAt, Base):
    """One version of a specimen's report. Version 1 is updated in place while it is a draft; once a version
    is signed out it never changes, and a later change is a new version (an amendment)."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("specimen_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    specimen_id: Mapped[int] = mapped_column(ForeignKey("specimens.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer, comment="1, 2, ... per specimen; > 1 is an amendment")
    status: Mapped[ReportStatus] = mapped_column(enum_column(ReportStatus, "report_status"),
                                                 default=ReportStatus.DRAFT)
    content: Mapped[dict[str, Any]] = mapped_column(comment="the aggregated report (analysis.report)")
    content_hash: Mapped[str] = mapped_column(String(64),
                                              comment="sha256 of the clinical content; unchanged = no amendment")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    signed_out_by: Mapped[str | None] = mapped_column(String(128))
    signed_out_at: Mapped[datetime | None]
    amendment_reason: Mapped[str | None] = mapped_column(Text, comment="why a signed-out report was changed")

    specimen: Mapped[Specimen] = relationship()
    outbox: Mapped[LisOutbox | None] = relationship(back_populates="report")


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"


class LisOutbox(CreatedAt, Base):
    """An HL7 v2 message to the LIS, written in the sign-out transaction. One per report version (unique), so
    a version is never queued twice; the sender locks the row while it sends (docs/reports.md)."""

    __tablename__ = "lis_outbox"
    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id", ondelete="RESTRICT"), unique=True)
    control_id: Mapped[str] = mapped_column(String(20), unique=True, comment="MSH-10, stable per version")
    message: Mapped[str] = mapped_column(Text, comment="the HL7 v2.5.1 ORU^R01 (ER7), as signed out")
    status: Mapped[OutboxStatus] = mapped_column(enum_column(OutboxStatus, "outbox_status"),
                                                 default=OutboxStatus.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    ack_code: Mapped[str | None] = mapped_column(String(4), comment="MSA-1 of the LIS's ACK")
    sent_at: Mapped[datetime | None]

    report: Mapped[Report] = relationship(back_populates="outbox")
