"""integrity: worker deaths per slide, last send of a training run

Revision ID: 0002_integrity
Revises: 0001
Create Date: 2026-12-01 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
SIDECAR_BEFORE, SIDECAR_AFTER = "the sidecar as received", "the sidecar's validated fields (never raw)"
QUEUED_AT = "when its analysis was last sent"

revision: str = "0002_integrity"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("slide_images") as batch:
        batch.add_column(sa.Column("worker_deaths", sa.Integer(), server_default=sa.text("0"), nullable=False,
                                   comment="attempts abandoned since the last explicit re-run"))
        batch.alter_column("sidecar", existing_type=JSON, existing_nullable=True, comment=SIDECAR_AFTER,
                           existing_comment=SIDECAR_BEFORE)
        batch.alter_column("queued_at", existing_type=sa.DateTime(timezone=True), existing_nullable=True,
                           comment=QUEUED_AT)
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True,
                                   comment="when hep2.train_model was last sent (database clock)"))


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("sent_at")
    with op.batch_alter_table("slide_images") as batch:
        batch.alter_column("queued_at", existing_type=sa.DateTime(timezone=True), existing_nullable=True,
                           comment=None, existing_comment=QUEUED_AT)
        batch.alter_column("sidecar", existing_type=JSON, existing_nullable=True, comment=SIDECAR_BEFORE,
                           existing_comment=SIDECAR_AFTER)
        batch.drop_column("worker_deaths")
