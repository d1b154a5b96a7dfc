"""model files: a model version can hold several artefact files (a fused cell classifier)

Revision ID: 0005_model_files
Revises: 0002_reports
Create Date: 2026-12-02 12:00:00

* ``model_versions.entry_file``: the file under ``artifact_uri`` the loader opens (a fused model's JSON);
  NULL for versions registered before: ``weights.safetensors``.
* ``model_versions.files``: every artefact file's name -> sha256, checked when a worker fetches the version;
  NULL for versions registered before: the weights file alone, checked against ``sha256``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_model_files"
down_revision: str | None = "0002_reports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("entry_file", sa.String(length=255), nullable=True,
                                   comment="the file under artifact_uri the loader opens; NULL: weights.safetensors"))
        batch.add_column(sa.Column("files", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()),
                                                                   "postgresql"), nullable=True,
                                   comment="artefact file name -> sha256, checked on fetch; NULL: the weights "
                                           "file alone (sha256)"))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("files")
        batch.drop_column("entry_file")
