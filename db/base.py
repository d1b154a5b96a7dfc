"""Declarative base and the column types shared by all tables."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Dialect, Enum, MetaData, TypeDecorator, func, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

# Deterministic constraint names, so that migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")
"""JSON everywhere, JSONB on PostgreSQL (indexable, compact)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


from sqlalchemy import JSON, DateTime, Dialect, Enum, MetaData, TypeDecorator, func, select
def enum_column(enum_cls: type[enum.Enum], name: str) -> Enum:
    """A portable enum: VARCHAR + CHECK constraint holding the member *values*."""
    return Enum(enum_cls, name=name, native_enum=False, create_constraint=True, length=32,
                values_callable=lambda members: [m.value for m in members])


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
        datetime: UTCDateTime(),
    }


class CreatedAt:
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())
