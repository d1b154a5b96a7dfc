"""``hep2 apikey create|list|revoke`` (the same service functions as ``/v1/api-keys``)."""

from __future__ import annotations

import typer
from sqlalchemy import select

from cli.apps import apikey_app
from db.models import ApiKey, Role
from db.session import session_scope
from services import ConflictError, NotFoundError
from services.keys import create_key, revoke_key


@apikey_app.command("create")
def create(role: str = typer.Option(..., help="scanner, viewer, reviewer, ops or admin"),
           name: str = typer.Option(..., help="Who or what uses the key.")) -> None:
    """Create a key and print it once."""
    try:
        role_ = Role(role)
    except ValueError as exc:
        raise typer.BadParameter(f"unknown role {role!r}; one of: {', '.join(r.value for r in Role)}") from exc
    with session_scope() as session:
        row, plain = create_key(session, name, role_, actor="cli")
        key_id = row.id
    typer.echo(f"id {key_id} role {role_.value} name {name}\n{plain}\n(store it now: it is not shown again)")


@apikey_app.command("list")
def list_keys() -> None:
    """Keys with their prefix, role and state."""
    with session_scope() as session:
        for row in session.scalars(select(ApiKey).order_by(ApiKey.id)):
            state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
            typer.echo(f"{row.id:>5}  {row.prefix}…  {row.role.value:<9} {state:<18} {row.name}")


@apikey_app.command("revoke")
def revoke(key_id: int = typer.Argument(..., help="Key id from `hep2 apikey list`.")) -> None:
    """Revoke a key."""
    with session_scope() as session:
        try:
            revoke_key(session, key_id, actor="cli")
        except NotFoundError as exc:
            raise typer.BadParameter(str(exc)) from exc
        except ConflictError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"key {key_id} revoked")
