"""``/v1/me`` and API-key management over HTTP (admin); the CLI ``hep2 apikey`` does the same."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel
from sqlalchemy import select

from api.auth import Admin, SessionDep, Viewer
from api.schemas import ORM, Name
from db.models import ApiKey, Role
from services import ConflictError, NotFoundError
from services.keys import create_key, revoke_key

router = APIRouter(prefix="/v1", tags=["auth"])


class MeOut(BaseModel):
    name: str
    role: str


class KeyOut(ORM):
    id: int
    name: str
    prefix: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyIn(BaseModel):
    name: Name
    role: Role


class NewKeyOut(KeyOut):
    key: str


@router.get("/me", response_model=MeOut)
def me(who: Viewer) -> MeOut:
    """The caller's key name and role (the dashboard's login check)."""
    return MeOut(name=who.name, role=who.role.value)


@router.get("/api-keys", response_model=list[KeyOut])
def list_keys(session: SessionDep, _: Admin) -> list[ApiKey]:
    """All keys (hashes are never returned)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


@router.post("/api-keys", response_model=NewKeyOut, status_code=status.HTTP_201_CREATED)
def new_key(body: KeyIn, session: SessionDep, who: Admin) -> NewKeyOut:
    """Create a key; the plaintext is in this response only."""
    row, plain = create_key(session, body.name, body.role, who.actor)
    return NewKeyOut.model_validate({**KeyOut.model_validate(row).model_dump(), "key": plain})


@router.post("/api-keys/{key_id}/revoke", response_model=KeyOut)
def revoke(key_id: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep, who: Admin) -> ApiKey:
    """Revoke a key; it stops working at once. The last active admin key cannot be revoked (409)."""
    try:
        return revoke_key(session, key_id, who.actor)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
