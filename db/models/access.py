"""Who did what: reviews of results, API keys and the audit trail."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base, CreatedAt, enum_column


class Role(enum.StrEnum):
    SCANNER = "scanner"  # may only post upload events
    VIEWER = "viewer"
    REVIEWER = "reviewer"
    OPS = "ops"
    ADMIN = "admin"


class Review(CreatedAt, Base):
    """A person's confirmation or correction of a specimen result or a cell; becomes a training label."""

    __tablename__ = "reviews"
    __table_args__ = (
        CheckConstraint("(specimen_result_id IS NULL) <> (cell_id IS NULL)", name="one_target"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    specimen_result_id: Mapped[int | None] = mapped_column(
        ForeignKey("specimen_results.id", ondelete="CASCADE"), index=True)
    cell_id: Mapped[int | None] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(128))
    field: Mapped[str] = mapped_column(String(32), comment="pattern | intensity | cell_pattern | ...")
    old_value: Mapped[str | None] = mapped_column(String(64))
    new_value: Mapped[str] = mapped_column(String(64))
    comment: Mapped[str | None] = mapped_column(Text)
    undone_at: Mapped[datetime | None] = mapped_column(comment="set when the reviewer undid it: no longer a label")
    undone_by: Mapped[str | None] = mapped_column(String(128))


class ApiKey(CreatedAt, Base):
    """An API key; only its SHA-256 is stored, the prefix identifies it in logs."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(enum_column(Role, "api_role"))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class AuditEvent(Base):
    """An append-only record of every mutating action (who, what, on which entity)."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
