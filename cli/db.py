"""``hep2 db ...``: schema migrations."""

from __future__ import annotations

import typer

from cli.apps import db_app
from db import migrate


@db_app.command()
def upgrade(revision: str = typer.Argument("head")) -> None:
    """Migrate the database (HEP2_DATABASE_URL) up to ``revision``."""
    migrate.upgrade(revision=revision)
    typer.echo(f"database at {revision}")


@db_app.command()
def downgrade(revision: str = typer.Argument(..., help='target, e.g. "-1" or "base"')) -> None:
    """Migrate the database down to ``revision``."""
    migrate.downgrade(revision=revision)


@db_app.command()
def current() -> None:
    """Show the database's revision."""
    migrate.current()
