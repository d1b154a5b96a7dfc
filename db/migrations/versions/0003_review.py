"""review: undoable reviews, the quality gate's report on each result

Revision ID: 0002_review
Revises: 0002_integrity
Create Date: 2026-12-01 12:00:00

* ``reviews.undone_at`` / ``undone_by``: a reviewer can undo a review (a cell correction made by mistake);
  the row stays (history) but no longer counts as the final value or as a training label.
* ``specimen_results.quality``: what the image-quality gate measured (noise, focus, saturation, nuclei seen).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002_review"
down_revision: str | None = "0002_integrity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.add_column(sa.Column("undone_at", sa.DateTime(timezone=True), nullable=True,
                                   comment="set when the reviewer undid it: no longer a label"))
        batch.add_column(sa.Column("undone_by", sa.String(length=128), nullable=True))
    with op.batch_alter_table("specimen_results") as batch:
        batch.add_column(sa.Column(
            "quality", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True,
            comment="image-quality gate: noise, focus, saturation, nuclei seen (analysis/quality.py)"))


def downgrade() -> None:
    with op.batch_alter_table("specimen_results") as batch:
        batch.drop_column("quality")
    with op.batch_alter_table("reviews") as batch:
        batch.drop_column("undone_by")
        batch.drop_column("undone_at")
