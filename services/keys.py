"""API keys: a key is ``hep2_<random>``; only its SHA-256 and an 8-character prefix are stored."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import audit
from db.base import utcnow
from db.models import ApiKey, Role
from services import ConflictError, NotFoundError

KEY_PREFIX = "hep2_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, role: Role | str, actor: str) -> tuple[ApiKey, str]:
    """A new key row (committed, audited) and the plaintext key (shown once, never stored)."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, prefix=plain[: len(KEY_PREFIX) + 8], key_hash=hash_key(plain), role=Role(role))
    session.add(row)
    session.flush()
    audit.record(session, actor, "apikey.create", "api_key", row.id, name=name, role=row.role.value)
    session.commit()
    return row, plain


def revoke_key(session: Session, key_id: int, actor: str) -> ApiKey:
    """Revoke a key (committed, audited); it stops working at once.

    The last active admin key cannot be revoked (conflict): nobody could manage keys over HTTP any more.
    Active admin keys are locked while counting, so two admins cannot revoke each other at once."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFoundError(f"API key {key_id} does not exist")
    if row.revoked_at is None and row.role is Role.ADMIN:
        admins = session.scalars(select(ApiKey.id).where(ApiKey.role == Role.ADMIN, ApiKey.revoked_at.is_(None))
                                 .order_by(ApiKey.id).with_for_update()).all()
        if list(admins) == [key_id]:
            session.rollback()
            raise ConflictError(f"API key {key_id} is the last active admin key; create another admin key "
                                "before revoking it")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    audit.record(session, actor, "apikey.revoke", "api_key", key_id, name=row.name)
    session.commit()
    return row
