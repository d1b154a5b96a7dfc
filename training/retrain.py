"""A training run of the service: snapshot -> grouped K-fold CV -> final fit -> candidate -> policy.

The challenger (this run's parameters) and the champion (the production version's parameters) are
trained and tested on the same grouped folds, so the promotion policy compares like with like. Per-fold
metrics are stored as each fold finishes; progress (fold, epoch, percent) is updated every epoch; a
cancellation request is honoured at the next epoch.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from analysis.models.classifier import save_checkpoint
from db import audit
from db.base import db_now, utcnow
from db.models import (
    TRAINABLE_TASKS,
    Dataset,
    FoldMetrics,
    ModelTask,
    ModelVersion,
    Review,
    RunStatus,
    TrainingRun,
)
from db.session import session_scope
from hep2 import __version__
from hep2.settings import get_settings
from hep2.storage import ObjectStorage
from training import registry
from training.card import git_commit
from training.crossval import cross_validate, inner_split
from training.cv import grouped_kfold
from training.experiment import oov_thresholds
from training.metrics import CLASS_NAMES, summarize_folds
from training.recipe import CellRecipe
from training.snapshot import build_snapshot
from training.specimen_metrics import specimen_metrics
from training.trainer import JsonlLogger, TrainConfig, fit


class RunCancelled(Exception):
    """Ops asked to cancel the run."""


@dataclass(frozen=True)
class RunParameters(CellRecipe):
    """What a run trains (the one recipe, :class:`training.recipe.CellRecipe`, and what the service adds);
    stored on the run and on the model version it produces."""

    max_steps: int | None = None
    datasets: list[str] | None = None
    include_reviews: bool = True
    compare_with_production: bool = True
    auto_promote: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunParameters:
        unknown = set(data) - cls.field_names()
        if unknown:
            raise ValueError(f"unknown training parameter(s): {sorted(unknown)}")
        return cls(**data)

    def train_config(self, **overrides: Any) -> TrainConfig:
        """The recipe's trainer settings with this run's step cap, without a progress bar (a worker logs)."""
        return super().train_config(**{"max_steps": self.max_steps, "progress": False, **overrides})


def start_training(session: Session, task: ModelTask | str, actor: str, parameters: dict[str, Any] | None = None,
                   trigger: str = "api") -> TrainingRun:
    """Create a queued run (the caller sends ``hep2.train_model`` after commit)."""
    task = ModelTask(task)
    if task not in TRAINABLE_TASKS:
        raise ValueError(f"training {task.value} through the service is not supported yet")
    params = RunParameters.from_dict(parameters or {})
    run = TrainingRun(task=task, trigger=trigger, requested_by=actor, parameters=asdict(params),
                      status=RunStatus.QUEUED, folds=params.folds)
    session.add(run)
    session.flush()
    audit.record(session, actor, "training.start", "training_run", run.id, trigger=trigger)
    return run


def due_for_retraining(session: Session, trigger: str, min_new_labels: int) -> str | None:
    """Why a scheduled run should start now, or None. Never while another run is queued or running;
    ``labels``: only once ``min_new_labels`` reviews exist that no earlier run's snapshot contained."""


    recent = utcnow() - timedelta(seconds=get_settings().training_time_limit_s)  # older ones died with a worker
    busy = session.scalar(select(func.count()).select_from(TrainingRun).where(
        TrainingRun.status.in_([RunStatus.QUEUED, RunStatus.RUNNING]), TrainingRun.created_at > recent))
    if busy:
        return None
    if trigger == "schedule":
        has_data = session.scalar(select(func.count()).select_from(Dataset)) or session.scalar(
            select(func.count()).select_from(Review).where(Review.cell_id.is_not(None)))
        return "scheduled retraining" if has_data else None
    last = session.scalar(select(func.max(TrainingRun.started_at)))
    new = session.scalar(select(func.count()).select_from(Review).where(
        Review.cell_id.is_not(None), Review.created_at > last if last else True))
    return f"{new} new reviewed cell labels" if new >= min_new_labels else None


class ProgressLog(JsonlLogger):
    """Writes epoch progress to the run row and raises :class:`RunCancelled` when asked to stop."""

    def __init__(self, run_id: int, fit_index: int, total_fits: int, epochs: int, fold: int | str) -> None:
        super().__init__(None, fold=fold)
        self.run_id, self.fit_index, self.total_fits, self.epochs, self.fold = (
            run_id, fit_index, total_fits, epochs, fold)

    def log(self, event: str, **fields: Any) -> None:
        super().log(event, **fields)
        if event != "epoch":
            return
        done = self.fit_index + (fields.get("epoch", 0) + 1) / self.epochs
        with session_scope() as session:
            run = session.get(TrainingRun, self.run_id)
            assert run is not None
            run.current_fold = self.fold if isinstance(self.fold, int) else None
            run.current_epoch = fields.get("epoch", 0) + 1
            run.progress_pct = round(min(99.0, 100.0 * done / self.total_fits), 1)
            if run.cancel_requested:
                raise RunCancelled(f"run {self.run_id} cancelled at fold {self.fold}, epoch {run.current_epoch}")


def _cv_summary(fold_metrics: list[dict[str, Any]], signature: str, specimen: dict[str, Any]) -> dict[str, Any]:
    """Mean MCA and per-class recall over the test folds and the specimen-level calls of the out-of-fold
    predictions (what the promotion policy compares)."""
    mean = summarize_folds(fold_metrics)
    recall = {name: mean[f"recall_{name}"]["mean"] for name in CLASS_NAMES
              if mean[f"recall_{name}"]["mean"] is not None}
    return {"mca": mean["mca"]["mean"], "recall": recall, "folds_signature": signature,
            "folds": len(fold_metrics), "summary": mean, "specimen": specimen}


def claim_run(session: Session, run_id: int, task_id: str | None, dead_after: timedelta) -> TrainingRun | str:
    """Lock the run and mark it running for this message, or return why this message must not run it.

    A queued run starts. A running run restarts only for the redelivery of its own message (the worker
    that held it died) or once it has run longer than ``dead_after`` (the hard time limit: its holder is
    gone); a duplicate message (a re-send by the maintenance sweep) never restarts a run on a live worker."""
    run = session.scalar(select(TrainingRun).where(TrainingRun.id == run_id).with_for_update())
    if run is None or run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
        return f"run is {run.status.value if run else 'missing'}"
    now = db_now(session)
    if run.status is RunStatus.RUNNING:
        own_message = task_id is not None and run.celery_task_id == task_id
        dead = run.started_at is None or run.started_at < now - dead_after
        if not (own_message or dead):
            return f"run {run_id} is running on a live worker (message {run.celery_task_id})"
    run.status, run.started_at, run.progress_pct, run.error = RunStatus.RUNNING, now, 0.0, None
    if task_id is not None:
        run.celery_task_id = task_id
    return run


def run_training(run_id: int, storage: ObjectStorage, task_id: str | None = None) -> dict[str, Any]:
    """Execute a queued run end to end; returns what happened (also stored on the run)."""
    dead_after = timedelta(seconds=get_settings().training_time_limit_s)
    with session_scope() as session:
        run = claim_run(session, run_id, task_id, dead_after)
        if isinstance(run, str):
            return {"run_id": run_id, "skipped": run}
        params = RunParameters.from_dict(run.parameters)
        snapshot_key, table = build_snapshot(session, storage, run_id, params.datasets, params.include_reviews)
        run.snapshot_uri, run.snapshot_rows, run.snapshot_sha256 = snapshot_key, len(table), table.data_hash()
        champion = registry.production(session, ModelTask.CELL_PATTERN) if params.compare_with_production else None
        champion_params = _champion_parameters(champion)
    try:
        return _train(run_id, storage, params, table, champion, champion_params)
    except RunCancelled as exc:
        _finish(run_id, RunStatus.CANCELLED, str(exc))
        return {"run_id": run_id, "status": "cancelled"}
    except Exception as exc:
        _finish(run_id, RunStatus.FAILED, f"{type(exc).__name__}: {exc}")
        raise


def _champion_parameters(champion: ModelVersion | None) -> RunParameters | None:
    if champion is None:
        return None
    known = {k: v for k, v in (champion.parameters or {}).items() if k in RunParameters.field_names()}
    return RunParameters.from_dict(known) if known else None


def _train(run_id: int, storage: ObjectStorage, params: RunParameters, table: Any, champion: ModelVersion | None,
           champion_params: RunParameters | None) -> dict[str, Any]:
    y, groups = table.labels, table.groups
    folds = grouped_kfold(y, groups, params.folds, params.split_seed)
    signature = hashlib.sha256(json.dumps([sorted(set(groups[test].tolist())) for _, test in folds]).encode())
    contenders = [("challenger", params)] + ([("champion", champion_params)] if champion_params else [])
    total_fits = len(folds) * len(contenders) + 1
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in contenders}
    cache: dict[tuple[int, bool], np.ndarray] = {}
    oof = {name: np.zeros((len(y), len(CLASS_NAMES)), np.float32) for name, _ in contenders}
    for c, (name, p) in enumerate(contenders):
        train_cfg = p.train_config()
        outcomes = cross_validate(
            _images(table, p, cache), y, groups, [(tr, None, te) for tr, te in folds], p.model_config(), train_cfg,
            p.tta, p.val_fraction, params.split_seed,
            lambda k, c=c, p=p: ProgressLog(run_id, c * len(folds) + k, total_fits, p.epochs, k))
        for outcome in outcomes:
            results[name].append(outcome.metrics)
            oof[name][outcome.test] = outcome.probs
            if name == "challenger":
                _store_fold(run_id, outcome.fold, outcome.metrics, sorted(set(groups[outcome.test].tolist())))
    cv = _cv_summary(results["challenger"], signature.hexdigest(), specimen_metrics(y, oof["challenger"], groups))
    metrics: dict[str, Any] = {"cv": cv, "per_fold": results["challenger"]}
    thresholds = oov_thresholds(oof["challenger"], groups)
    if champion is not None and "champion" in results:
        metrics["champion_cv"] = {**_cv_summary(results["champion"], signature.hexdigest(),
                                                specimen_metrics(y, oof["champion"], groups)),
                                  "production_version": champion.version}

    x = _images(table, params, cache)
    inner_train, val = inner_split(np.arange(len(y)), y, groups, params.val_fraction, params.split_seed)
    final = fit(x[inner_train], y[inner_train], params.model_config(),
                params.train_config(), x[val], y[val],
                ProgressLog(run_id, total_fits - 1, total_fits, params.epochs, "final"))
    return _register(run_id, storage, params, table, final.model, metrics, thresholds)


def _images(table: Any, p: RunParameters, cache: dict[tuple[int, bool], np.ndarray]) -> np.ndarray:
    key = (p.img_size, p.use_mask)
    if key not in cache:
        cache[key] = table.load(p.img_size, p.use_mask)
    return cache[key]


def _store_fold(run_id: int, fold: int, metrics: dict[str, Any], test_groups: list[str]) -> None:
    with session_scope() as session:
        session.add(FoldMetrics(run_id=run_id, fold=fold, mean_class_accuracy=metrics["mca"],
                                accuracy=metrics["accuracy"], metrics=metrics, test_groups=test_groups,
                                finished_at=utcnow()))


def _register(run_id: int, storage: ObjectStorage, params: RunParameters, table: Any, model: Any,
              metrics: dict[str, Any], thresholds: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_checkpoint(model, params.model_config(), Path(tmp) / "model.safetensors", half=True,
                                  extra={"tta": params.tta})
        card = {"metrics": metrics, "parameters": asdict(params), "data_hash": table.data_hash(),
                "code_version": git_commit().get("commit") or __version__, "tta": params.tta,
                "protocol": "grouped K-fold by specimen_group (patient/specimen)", "training_run": run_id,
                "specimen_thresholds": thresholds}
        with session_scope() as session:
            version = registry.publish(session, storage, ModelTask.CELL_PATTERN, weights, card,
                                       actor=f"training-run:{run_id}", training_run_id=run_id)
            decision = (registry.promote(session, version.id, actor=f"training-run:{run_id}")
                        if params.auto_promote else (False, "auto-promotion disabled for this run"))
            run = session.get(TrainingRun, run_id)
            assert run is not None
            run.mean_metrics = {"cv": metrics["cv"], "champion_cv": metrics.get("champion_cv"),
                                "model_version": version.version, "promoted": decision[0], "decision": decision[1]}
            run.status, run.finished_at, run.progress_pct = RunStatus.SUCCEEDED, utcnow(), 100.0
            return {"run_id": run_id, "status": "succeeded", "model_version": version.version,
                    "promoted": decision[0], "decision": decision[1]}


def _finish(run_id: int, status: RunStatus, error: str) -> None:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is not None:
            run.status, run.error, run.finished_at = status, error, utcnow()
