"""The audit trail: one append-only row per mutating action, written in the caller's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import AuditEvent


def record(session: Session, actor: str, action: str, entity_type: str, entity_id: object = None,
           **details: Any) -> AuditEvent:
    """Add an audit event (committed or rolled back together with the change it describes)."""
    event = AuditEvent(at=utcnow(), actor=actor, action=action, entity_type=entity_type,
                       entity_id=None if entity_id is None else str(entity_id), details=details)
    session.add(event)
    return event
