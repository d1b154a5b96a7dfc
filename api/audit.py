"""The audit trail: every mutating call adds one AuditEvent (``db.audit.record``) in the transaction of its change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from api.auth import Ops, SessionDep
from db.audit import record
from db.models import AuditEvent

router = APIRouter(prefix="/v1/audit", tags=["audit"])


__all__ = ["record", "router"]


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    at: datetime
    actor: str
    action: str
    entity_type: str
    entity_id: str | None
    details: dict[str, Any]


@router.get("", response_model=list[AuditOut])
def list_audit(session: SessionDep, _: Ops, limit: int = Query(100, ge=1, le=1000),
               before_id: int | None = Query(None, ge=1, le=2**31 - 1)) -> list[AuditEvent]:
    """The newest audit events (ops and admin)."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    return list(session.scalars(query))
