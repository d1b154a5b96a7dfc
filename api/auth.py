"""API keys and roles.

A key is ``hep2_<random>``; only its SHA-256 and an 8-character prefix are stored. Send it as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Roles are ordered viewer < reviewer < ops < admin;
``scanner`` stands apart and may only post upload events.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.base import utcnow
from db.models import ApiKey, Role
from db.session import session_factory
from hep2.settings import get_settings
from services.keys import hash_key

RANK = {Role.VIEWER: 1, Role.REVIEWER: 2, Role.OPS: 3, Role.ADMIN: 4}
TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often per key


def get_session() -> Iterator[Session]:
    """A request's session; endpoints commit what they change, anything uncommitted is rolled back."""
    with session_factory()() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
Row = TypeVar("Row")


def get_or_404(session: Session, model: type[Row], ident: int, what: str, **options: Any) -> Row:
    """``session.get(model, ident, **options)``, or a 404 "<what> <ident> not found"."""
    row = session.get(model, ident, **options)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {ident} not found")
    return row

BearerDep = Annotated[HTTPAuthorizationCredentials | None,
                      Depends(HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>"))]
ApiKeyDep = Annotated[str | None, Depends(APIKeyHeader(name="X-API-Key", auto_error=False))]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name and role."""

    key_id: int | None
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}:{self.name}" if self.key_id is not None else self.name


def allowed_roles(*roles: Role | str) -> frozenset[Role]:
    """The roles a rule admits: each named hierarchical role and every role above it; scanner only itself."""
    out: set[Role] = set()
    for role in map(Role, roles):
        out |= {role} if role is Role.SCANNER else {r for r, rank in RANK.items() if rank >= RANK[role]}
    return frozenset(out)


def presented(bearer: str | None, x_api_key: str | None) -> str | None:
    """The credential a request presents: ``X-API-Key`` first, else the bearer token."""
    if x_api_key and x_api_key.strip():
        return x_api_key.strip()
    return bearer.strip() if bearer and bearer.strip() else None


def webhook_principal(bearer: str | None) -> Principal | None:
    """The webhook's principal when ``bearer`` is ``HEP2_WEBHOOK_TOKEN`` (constant-time comparison)."""
    token = get_settings().webhook_token
    bearer = bearer.strip() if bearer else None
    if token and bearer and hmac.compare_digest(bearer.encode(), token.get_secret_value().encode()):
        return Principal(None, "webhook", Role.SCANNER)
    return None


def identify(session: Session, bearer: str | None, x_api_key: str | None, webhook: bool) -> Principal:
    """Who presents these credentials (401 if nobody); ``webhook``: the webhook token is accepted too.

    The one place credentials are checked: by :class:`api.middleware.RequestGuard` before a request body is
    read, and by the route's :class:`RoleRule` (which reuses the guard's answer)."""
    principal = webhook_principal(bearer) if webhook else None
    return principal or authenticate(session, presented(bearer, x_api_key))


def authenticate(session: Session, key: str | None) -> Principal:
    """The principal of a valid, unrevoked key; 401 otherwise."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key))) if key else None
    if row is None or row.revoked_at is not None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing, unknown or revoked API key",
                            headers={"WWW-Authenticate": "Bearer"})
    now = utcnow()
    if row.last_used_at is None or _aware(row.last_used_at) < now - TOUCH_EVERY:
        row.last_used_at = now
        session.commit()
    return Principal(row.id, row.name, row.role)


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes (UTC); PostgreSQL aware ones."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class RoleRule:
    """A dependency admitting the given roles (and, for hierarchical roles, those above them)."""

    webhook = False  # whether HEP2_WEBHOOK_TOKEN is a credential for this route

    def __init__(self, *roles: Role | str) -> None:
        self.roles = allowed_roles(*roles)

    def __call__(self, request: Request, session: SessionDep, bearer: BearerDep = None,
                 x_api_key: ApiKeyDep = None) -> Principal:
        principal = getattr(request.state, "principal", None)  # set by the guard when it read the body
        if principal is None:
            principal = identify(session, bearer.credentials if bearer else None, x_api_key, self.webhook)
        self.check(principal)
        return principal

    def check(self, principal: Principal) -> None:
        if principal.role not in self.roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN,
                                f"role {principal.role.value} may not do this "
                                f"(needs one of: {', '.join(sorted(r.value for r in self.roles))})")


def require_role(*roles: Role | str) -> RoleRule:
    """``Depends(require_role("reviewer"))``: 401 without a valid key, 403 for a role not admitted."""
    return RoleRule(*roles)


Viewer = Annotated[Principal, Depends(require_role(Role.VIEWER))]
Reviewer = Annotated[Principal, Depends(require_role(Role.REVIEWER))]
Ops = Annotated[Principal, Depends(require_role(Role.OPS))]
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]


class WebhookOrScanner(RoleRule):
    """``POST /v1/events/s3``: MinIO's webhook bearer token (``HEP2_WEBHOOK_TOKEN``) or a scanner API key."""

    webhook = True

    def __init__(self) -> None:
        super().__init__(Role.SCANNER)


def route_rule(dependant: Any, overrides: dict[Any, Any]) -> RoleRule | None:
    """The first RoleRule in a route's dependency tree (after overrides); None if the route is unguarded."""
    for dep in dependant.dependencies:
        call = overrides.get(dep.call, dep.call)
        if isinstance(call, RoleRule):
            return call
        found = route_rule(dep, overrides)
        if found is not None:
            return found
    return None


def route_roles(dependant: Any, overrides: dict[Any, Any]) -> frozenset[Role] | None:
    """The roles the first RoleRule in a route's dependency tree admits (after overrides); None if unguarded."""
    rule = route_rule(dependant, overrides)
    return rule.roles if rule is not None else None
