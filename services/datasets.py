"""Training data sets in object storage: register a labelled cell folder."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from db import audit
from db.models import Dataset
from hep2.storage import ObjectStorage


def register_dataset(session: Session, storage: ObjectStorage, name: str, folder: Path, actor: str) -> Dataset:
    """Upload ``folder`` (labels.csv + the files it names) as ``datasets/<name>/`` and register it (audited)."""
    from training.snapshot import register_dataset as upload_dataset  # imports torch: kept off the API's start-up

    row = upload_dataset(session, storage, name, folder)
    session.flush()
    audit.record(session, actor, "dataset.register", "dataset", row.id, name=name, rows=row.rows, sha256=row.sha256)
    session.commit()
    return row
