"""The audit trail: every mutating call adds one AuditEvent in the transaction of its change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Ops, SessionDep
from db.base import utcnow
from db.models import AuditEvent

router = APIRouter(prefix="/v1/audit", tags=["audit"])


def record(session: Session, actor: str, action: str, entity_type: str, entity_id: object | None,
           **details: Any) -> AuditEvent:
    """Add an audit row to ``session``; it commits (or rolls back) together with the change it describes."""
    event = AuditEvent(at=utcnow(), actor=actor, action=action, entity_type=entity_type,
                       entity_id=None if entity_id is None else str(entity_id), details=details)
    session.add(event)
    return event


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
