"""``hep2 apikey create|list|revoke`` and ``hep2 bench-api``."""

from __future__ import annotations

from pathlib import Path

import typer

apikey_app = typer.Typer(no_args_is_help=True, help="API keys (stored hashed; the key is printed once).")


@apikey_app.command("create")
def create(role: str = typer.Option(..., help="scanner, viewer, reviewer, ops or admin"),
           name: str = typer.Option(..., help="Who or what uses the key.")) -> None:
    """Create a key and print it once."""
    from api.audit import record
    from api.auth import create_key
    from db.models import Role
    from db.session import session_scope

    try:
        role_ = Role(role)
    except ValueError as exc:
        raise typer.BadParameter(f"unknown role {role!r}; one of: {', '.join(r.value for r in Role)}") from exc
    with session_scope() as session:
        row, plain = create_key(session, name, role_)
        record(session, "cli", "apikey.create", "api_key", row.id, name=name, role=role_.value)
        key_id = row.id
    typer.echo(f"id {key_id} role {role_.value} name {name}\n{plain}\n(store it now: it is not shown again)")


@apikey_app.command("list")
def list_keys() -> None:
    """Keys with their prefix, role and state."""
    from sqlalchemy import select

    from db.models import ApiKey
    from db.session import session_scope

    with session_scope() as session:
        for row in session.scalars(select(ApiKey).order_by(ApiKey.id)):
            state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
            typer.echo(f"{row.id:>5}  {row.prefix}…  {row.role.value:<9} {state:<18} {row.name}")


@apikey_app.command("revoke")
def revoke(key_id: int = typer.Argument(..., help="Key id from `hep2 apikey list`.")) -> None:
    """Revoke a key."""
    from api.audit import record
    from api.auth import revoke_key
    from db.session import session_scope

    with session_scope() as session:
        try:
            row = revoke_key(session, key_id)
        except LookupError as exc:
            raise typer.BadParameter(str(exc)) from exc
        record(session, "cli", "apikey.revoke", "api_key", key_id, name=row.name)
    typer.echo(f"key {key_id} revoked")


def bench_api(
    json_out: Path = typer.Option(Path("bench-api.json"), "--json", help="Where to write the report."),
    specimens: int = typer.Option(10_000, help="Specimens to have in the database (seeded if fewer)."),
    requests: int = typer.Option(200, help="Worklist page requests to time."),
) -> None:
    """Seed specimens and time the worklist page (p50/p95); writes JSON."""
    from api.bench_worklist import run

    report = run(specimens, requests, json_out)
    typer.echo(f"worklist page over {report['specimens']} specimens: p50 {report['first_page_ms']['p50']} ms, "
               f"p95 {report['first_page_ms']['p95']} ms; wrote {json_out}")


def register(app: typer.Typer) -> None:
    """Mount ``apikey`` and ``bench-api`` on the ``hep2`` command."""
    app.add_typer(apikey_app, name="apikey")
    app.command("bench-api")(bench_api)
