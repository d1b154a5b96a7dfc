"""The model registry from the outside: promote (through the policy, or forced) and roll back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from analysis.models import WEIGHTS_DIR
from db import audit
from db.models import ModelTask, ModelVersion
from hep2.storage import ObjectStorage
from services import ConflictError, NotFoundError
from training import registry


def model_card(version: ModelVersion, storage: ObjectStorage | None) -> dict[str, Any] | None:
    """The version's model card: the bundled weights' ``<name>.json`` beside them, else ``card.json`` under
    its artefact prefix in object storage; None when there is none or it cannot be read."""
    try:
        if version.artifact_uri.startswith("bundled:"):
            path = (WEIGHTS_DIR / Path(version.artifact_uri.removeprefix("bundled:")).name).with_suffix(".json")
            return json.loads(path.read_text()) if path.is_file() else None
        if storage is None:
            return None
        return json.loads(storage.get(version.artifact_uri.rstrip("/") + "/" + registry.CARD_NAME))
    except (OSError, ValueError, KeyError, LookupError):
        return None


def card_metrics(card: dict[str, Any] | None) -> dict[str, Any] | None:
    """Grouped-CV results recorded in a model card: mean/std MCA, per-fold MCA and accuracy, the pooled
    confusion matrix (the card written by ``hep2 train cells``); None when the card has none."""
    if not card or "cv_mean" not in card:
        return None
    mca = card["cv_mean"].get("mca") or {}
    folds = [{"fold": f.get("fold"), "mean_class_accuracy": f.get("mca"), "accuracy": f.get("accuracy")}
             for f in card.get("fold_info") or [] if f.get("mca") is not None]
    confusion = (card.get("pooled") or {}).get("confusion")
    return {"protocol": card.get("protocol"), "mca": mca.get("mean"), "mca_std": mca.get("std"),
            "pooled_mca": (card.get("pooled") or {}).get("mca"), "folds": folds,
            "confusion": {"labels": confusion["labels"], "matrix": confusion["matrix"]} if confusion else None,
            "date": card.get("date"), "n_cells": card.get("n_cells"), "n_groups": card.get("n_groups")}


def promote(session: Session, version_id: int, actor: str, force: bool = False,
            comment: str | None = None) -> ModelVersion:
    """Promote a version through the promotion policy (``force`` overrides it).

    A refusal is recorded (stage reason, audit) and committed, then raised as :class:`ConflictError`."""
    if session.get(ModelVersion, version_id) is None:
        raise NotFoundError(f"model version {version_id} not found")
    promoted, message = registry.promote(session, version_id, actor=actor, force=force)
    if comment:
        audit.record(session, actor, "model.comment", "model_version", version_id, comment=comment)
    session.commit()
    if not promoted:
        raise ConflictError(message)
    version = session.get(ModelVersion, version_id)
    assert version is not None
    return version


def rollback(session: Session, task: ModelTask | str, actor: str) -> ModelVersion:
    """Put the previous production version of ``task`` back; none to go back to: conflict."""
    try:
        version = registry.rollback(session, ModelTask(task), actor=actor)
    except (LookupError, ValueError) as exc:
        session.rollback()
        raise ConflictError(str(exc)) from exc
    session.commit()
    return version
