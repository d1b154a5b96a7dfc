"""Alembic environment: the URL comes from ``db.migrate.alembic_config`` (or the settings)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from db.models import Base
from hep2.settings import get_settings

config = context.config
url = config.attributes.get("database_url") or get_settings().resolved_database_url

# SQLite cannot ALTER most things in place: batch mode copies the table.
options = {"target_metadata": Base.metadata, "render_as_batch": url.startswith("sqlite"),
           "compare_type": True}

if context.is_offline_mode():
    context.configure(url=url, literal_binds=True, **options)
    with context.begin_transaction():
        context.run_migrations()
else:
    connectable = config.attributes.get("connection") or create_engine(url)
    with connectable.connect() as connection:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
