"""The model registry from the outside: promote (through the policy, or forced) and roll back."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db import audit
from db.models import ModelTask, ModelVersion
from services import ConflictError, NotFoundError
from training import registry


def promote(session: Session, version_id: int, actor: str, force: bool = False,
            comment: str | None = None) -> ModelVersion:
    """Promote a version through the promotion policy (``force`` overrides it).

    A refusal is recorded (stage reason, audit) and committed, then raised as :class:`ConflictError`."""
    if session.get(ModelVersion, version_id) is None:
        raise NotFoundError(f"model version {version_id} not found")
    promoted, message = registry.promote(session, version_id, actor=actor, force=force)
    if comment:
        audit.record(session, actor, "model.comment", "model_version", version_id, comment=comment)
    session.commit()
    if not promoted:
        raise ConflictError(message)
    version = session.get(ModelVersion, version_id)
    assert version is not None
    return version


def rollback(session: Session, task: ModelTask | str, actor: str) -> ModelVersion:
    """Put the previous production version of ``task`` back; none to go back to: conflict."""
    try:
        version = registry.rollback(session, ModelTask(task), actor=actor)
    except (LookupError, ValueError) as exc:
        session.rollback()
        raise ConflictError(str(exc)) from exc
    session.commit()
    return version
