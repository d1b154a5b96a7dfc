"""Model registry: versions in the database, artefacts in object storage.

Artefacts live under ``models/<task>/<version>/``: ``card.json`` (data hash, code version, parameters,
per-fold and mean grouped-CV metrics, confusion matrix) and the model's files — a CNN's
``weights.safetensors``, or a fused cell classifier's JSON with its member files under their own names
(:func:`analysis.models.files.artifact_files`). Each file's sha256 is recorded on the row (``files``) and
checked when a worker fetches the version; the row's ``sha256`` is the classifier's identity, the one the
pipeline records with each result. Stages go
candidate -> production -> archived; exactly one production version per task (a partial unique index
backs this up). Promotion and roll-back each run in one transaction, with the task's rows locked, and are
audited.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from analysis.models import ModelWeights
from analysis.models.files import artifact_files, classifier_files, combined_sha256, is_ensemble, sha256_file
from db import audit
from db.base import utcnow
from db.models import ModelStage, ModelTask, ModelVersion
from hep2.settings import Settings, get_settings
from hep2.storage import ObjectStorage

WEIGHTS_NAME, CARD_NAME = "weights.safetensors", "card.json"


@dataclass(frozen=True)
class PromotionPolicy:
    """A candidate replaces production only if it is better on the same folds, for every class."""

    min_mca_gain: float = 0.005
    """Grouped-CV mean class accuracy must beat production's by at least this much."""
    max_recall_drop: float = 0.02
    """No class recall may fall by more than this."""
    max_specimen_loss: int = 0
    """The candidate may call at most this many more specimen groups wrong than production (out-of-fold,
    aggregated as the pipeline does); the specimen call is what a lab reports."""

    @classmethod
    def from_settings(cls) -> PromotionPolicy:
        settings = get_settings()
        return cls(settings.promotion_min_mca_gain, settings.promotion_max_recall_drop,
                   settings.promotion_max_specimen_loss)


def artifact_prefix(task: ModelTask, version: str) -> str:
    return f"models/{task.value}/{version}/"


def publish(session: Session, storage: ObjectStorage, task: ModelTask, weights: Path, card: dict[str, Any],
            actor: str, training_run_id: int | None = None) -> ModelVersion:
    """Upload a model's files + card and register them as a ``candidate``.

    ``weights``: a checkpoint (stored as ``weights.safetensors``) or a fused model's JSON (stored with its
    member files, each under its own name)."""
    paths = {p.name: p for p in artifact_files(weights)} if is_ensemble(weights) else {WEIGHTS_NAME: weights}
    if CARD_NAME in paths:
        raise ValueError(f"a model file may not be named {CARD_NAME}")
    files = {name: sha256_file(path) for name, path in paths.items()}
    sha = combined_sha256([sha256_file(p) for p in classifier_files(weights)])
    version = _free_version(session, task, f"{utcnow():%Y%m%d-%H%M%S}-{sha[:8]}")
    prefix = artifact_prefix(task, version)
    entry = weights.name if is_ensemble(weights) else WEIGHTS_NAME
    card_bytes = json.dumps({**card, "task": task.value, "version": version, "sha256": sha, "entry_file": entry,
                             "files": files}, indent=2).encode()
    for name, path in paths.items():
        storage.put(prefix + name, path.read_bytes(), "application/octet-stream")
    storage.put(prefix + CARD_NAME, card_bytes, "application/json")
    row = ModelVersion(task=task, version=version, stage=ModelStage.CANDIDATE, artifact_uri=prefix, sha256=sha,
                       entry_file=entry, files={**files, CARD_NAME: hashlib.sha256(card_bytes).hexdigest()},
                       metrics=card.get("metrics", {}), parameters=card.get("parameters", {}),
                       data_hash=card.get("data_hash"), code_version=card.get("code_version"),
                       training_run_id=training_run_id, stage_reason="registered")
    session.add(row)
    session.flush()
    audit.record(session, actor, "model.publish", "model_version", row.id, task=task.value, version=version,
                 family=row.family)
    return row


def _free_version(session: Session, task: ModelTask, base: str) -> str:
    taken = set(session.scalars(select(ModelVersion.version).where(ModelVersion.task == task,
                                                                   ModelVersion.version.startswith(base))))
    return next(v for v in (base, *(f"{base}-{n}" for n in range(2, 1000))) if v not in taken)


def production(session: Session, task: ModelTask, lock: bool = False) -> ModelVersion | None:
    query = select(ModelVersion).where(ModelVersion.task == task, ModelVersion.stage == ModelStage.PRODUCTION)
    return session.scalar(query.with_for_update() if lock else query)


def decide_promotion(candidate: ModelVersion, current: ModelVersion | None,
                     policy: PromotionPolicy) -> tuple[bool, str]:
    """Compare the candidate's grouped-CV metrics with production's *on the same folds*.

    The training run evaluates the production model's configuration on the candidate's folds and stores it
    as ``metrics["champion_cv"]``; without it (no production model), the candidate wins by default.
    """
    if current is None:
        return True, "no production version for this task"
    mine, theirs = candidate.metrics.get("cv"), candidate.metrics.get("champion_cv")
    if not mine or not theirs:
        return False, "no grouped-CV comparison with the production model on the same folds"
    if theirs.get("production_version") != current.version:
        return False, (f"compared with {theirs.get('production_version')}, but production is now "
                       f"{current.version}: retrain to compare again")
    if mine.get("folds_signature") != theirs.get("folds_signature"):
        return False, "candidate and production were not evaluated on the same folds"
    gain = mine["mca"] - theirs["mca"]
    if gain < policy.min_mca_gain:
        return False, (f"grouped-CV MCA {mine['mca']:.4f} vs production's {theirs['mca']:.4f} on the same "
                       f"folds: gain {gain:+.4f} < required {policy.min_mca_gain:+.4f}")
    drops = {cls: theirs["recall"][cls] - mine["recall"].get(cls, 0.0) for cls in theirs["recall"]}
    worst = max(drops, key=drops.__getitem__)
    if drops[worst] > policy.max_recall_drop:
        return False, (f"recall of {worst} falls {drops[worst]:.3f} (> {policy.max_recall_drop:.3f}) "
                       f"although MCA gains {gain:+.4f}")
    specimens = ""
    if mine.get("specimen") and theirs.get("specimen"):
        lost = mine["specimen"]["n"] - mine["specimen"]["correct"] - (
            theirs["specimen"]["n"] - theirs["specimen"]["correct"])
        if lost > policy.max_specimen_loss:
            return False, (f"{mine['specimen']['correct']}/{mine['specimen']['n']} specimens right vs production's "
                           f"{theirs['specimen']['correct']}/{theirs['specimen']['n']} on the same folds "
                           f"although MCA gains {gain:+.4f}")
        specimens = (f"; specimens {mine['specimen']['correct']}/{mine['specimen']['n']} vs "
                     f"{theirs['specimen']['correct']}/{theirs['specimen']['n']}")
    return True, (f"grouped-CV MCA {mine['mca']:.4f} vs {theirs['mca']:.4f} (+{gain:.4f}); largest recall "
                  f"drop {max(drops[worst], 0.0):.3f} ({worst}){specimens}")


def promote(session: Session, version_id: int, actor: str, force: bool = False,
            policy: PromotionPolicy | None = None) -> tuple[bool, str]:
    """Make a candidate production if the policy (or ``force``) allows; record the reason either way."""
    candidate = session.get(ModelVersion, version_id, with_for_update=True)
    if candidate is None:
        raise LookupError(f"model version {version_id} does not exist")
    current = production(session, candidate.task, lock=True)
    if current is not None and current.id == candidate.id:
        return True, "already production"
    ok, reason = decide_promotion(candidate, current, policy or PromotionPolicy.from_settings())
    if force and not ok:
        ok, reason = True, f"forced by {actor} (policy said: {reason})"
    if not ok:
        candidate.stage_reason = f"not promoted: {reason}"
        audit.record(session, actor, "model.promotion_refused", "model_version", candidate.id, reason=reason)
        return False, reason
    if current is not None:
        current.stage, current.stage_reason = ModelStage.ARCHIVED, f"replaced by {candidate.version}"
        session.flush()  # the one-production index is checked per statement
    candidate.stage, candidate.stage_reason, candidate.promoted_at = ModelStage.PRODUCTION, reason, utcnow()
    audit.record(session, actor, "model.promote", "model_version", candidate.id, reason=reason,
                 replaced=current.version if current else None, forced=force)
    return True, reason


def rollback(session: Session, task: ModelTask, actor: str) -> ModelVersion:
    """Archive production and restore the version that was production before it."""
    current = production(session, task, lock=True)
    if current is None:
        raise LookupError(f"no production version of {task.value} to roll back")
    previous = session.scalar(
        select(ModelVersion).where(ModelVersion.task == task, ModelVersion.stage == ModelStage.ARCHIVED,
                                   ModelVersion.promoted_at.is_not(None), ModelVersion.id != current.id)
        .order_by(ModelVersion.promoted_at.desc()).limit(1).with_for_update())
    if previous is None:
        raise LookupError(f"{task.value} has no earlier production version to roll back to")
    current.stage, current.stage_reason = ModelStage.ARCHIVED, f"rolled back by {actor}"
    session.flush()
    previous.stage, previous.stage_reason = ModelStage.PRODUCTION, f"restored by {actor} (roll-back)"
    previous.promoted_at = utcnow()
    audit.record(session, actor, "model.rollback", "model_version", previous.id,
                 restored=previous.version, archived=current.version)
    return previous


def registered_files(version: ModelVersion) -> dict[str, str]:
    """Artefact file name -> sha256 (versions registered before files were recorded: the weights alone)."""
    return dict(version.files) if version.files else {WEIGHTS_NAME: version.sha256}


def fetch(storage: ObjectStorage, version: ModelVersion, cache_dir: Path) -> Path:
    """The version's model in a local cache, as the file :func:`analysis.models.fused.load_cell_classifier`
    opens (a fused model: its JSON, the members beside it). Each file is downloaded once and checked against
    its registered SHA-256; a file that differs (in storage: ``ValueError``; in the cache: downloaded again)
    is never used."""
    folder = cache_dir / version.task.value / version.version
    files, fetched = registered_files(version), False
    for name, sha in files.items():
        target = folder / name
        if target.is_file() and sha256_file(target) == sha:
            continue
        data = storage.get(version.artifact_uri + name)
        if hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"artefact {name} of {version.task.value} {version.version} does not match its "
                             "registered SHA-256")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        fetched = True
    entry = folder / (version.entry_file or WEIGHTS_NAME)
    card = entry.with_suffix(".json")  # a checkpoint's model card beside it, where the inference code looks
    if not is_ensemble(entry) and (fetched or not card.is_file()):
        card.write_bytes((folder / CARD_NAME).read_bytes() if CARD_NAME in files
                         else storage.get(version.artifact_uri + CARD_NAME))
    return entry


def resolve_weights(session: Session, storage: ObjectStorage, settings: Settings) -> ModelWeights:
    """The weights to analyse with now: a pinned classifier (``HEP2_CELL_MODEL_PATH``), else the production
    version of each task (downloaded from object storage once), else None (the bundled model)."""
    chosen: dict[ModelTask, Path | None] = {}
    for task in (ModelTask.CELL_PATTERN, ModelTask.SEGMENTATION):
        pinned = settings.cell_model_path if task is ModelTask.CELL_PATTERN else None
        version = production(session, task)
        if pinned is not None:
            chosen[task] = pinned
        elif version is not None and not version.artifact_uri.startswith("bundled:"):
            chosen[task] = fetch(storage, version, settings.state_dir / "model-cache")
        else:
            chosen[task] = None
    return ModelWeights(cell_pattern=chosen[ModelTask.CELL_PATTERN], segmentation=chosen[ModelTask.SEGMENTATION])
