"""overlay layer: the worker stores the overlay layer; the full overlay is rendered on request

Revision ID: 0006_overlay_layer
Revises: 0005_model_files
Create Date: 2026-12-01 17:00:00

* ``specimen_results.overlay_layer_key``: the overlay layer the worker stored (``analysis.overlay.render_layer``);
  the full overlay is composed from the upload and this layer on first request and cached under
  ``overlay_key``. NULL for results written before: their ``overlay_key`` holds the worker's full overlay.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_overlay_layer"
down_revision: str | None = "0005_model_files"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("specimen_results") as batch:
        batch.add_column(sa.Column("overlay_layer_key", sa.String(length=1024), nullable=True,
                                   comment="the overlay layer (analysis/overlay.py); NULL: overlay_key was made "
                                           "by the worker"))
        batch.alter_column("overlay_key", existing_type=sa.String(length=1024), existing_nullable=True,
                           comment="the overlay PNG; with overlay_layer_key: rendered there on first request")


def downgrade() -> None:
    with op.batch_alter_table("specimen_results") as batch:
        batch.alter_column("overlay_key", existing_type=sa.String(length=1024), existing_nullable=True,
                           comment=None)
        batch.drop_column("overlay_layer_key")
