"""A training run of the service: snapshot -> grouped K-fold CV -> final fit -> candidate -> policy.

The challenger (this run's parameters) and the champion (the production version's parameters and family)
are trained and tested on the same grouped folds, so the promotion policy compares like with like. A run
trains the family its parameters name (``family``: the CNN alone, or CNN + texture fused; default
:data:`training.recipe.RECIPE`), see :mod:`training.contenders`. Per-fold metrics are stored as each fold's
final probabilities are known; progress (fold, epoch, percent) is updated every epoch and texture fold; a
cancellation request is honoured at the next one.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

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
from training.contenders import (
    ContenderCV,
    RunCancelled,
    RunData,
    RunProgress,
    cross_validate_contender,
    cv_fits,
    final_fit,
    final_fits,
)
from training.experiment import oov_thresholds
from training.metrics import CLASS_NAMES, summarize_folds
from training.recipe import CellRecipe
from training.snapshot import build_snapshot
from training.specimen_metrics import specimen_metrics
from training.trainer import TrainConfig

__all__ = ["RunCancelled", "RunParameters", "run_training", "start_training"]


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


def _cv_summary(cv: ContenderCV, data: RunData, family: str) -> dict[str, Any]:
    """Mean MCA and per-class recall over the test folds and the specimen-level calls of the out-of-fold
    predictions (what the promotion policy compares)."""
    mean = summarize_folds(cv.fold_metrics)
    recall = {name: mean[f"recall_{name}"]["mean"] for name in CLASS_NAMES
              if mean[f"recall_{name}"]["mean"] is not None}
    return {"mca": mean["mca"]["mean"], "recall": recall, "folds_signature": data.signature,
            "folds": len(cv.fold_metrics), "summary": mean, "family": family,
            "specimen": specimen_metrics(data.table.labels, cv.oof, data.table.groups)}


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
        data_hash = run.snapshot_sha256
        champion = registry.production(session, ModelTask.CELL_PATTERN) if params.compare_with_production else None
        champion_params = _champion_parameters(champion)
    try:
        return _train(run_id, storage, params, RunData.of(table, data_hash, params.folds, params.split_seed),
                      champion, champion_params)
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
    return RunParameters.from_dict({**known, "family": champion.family}) if known else None


def _train(run_id: int, storage: ObjectStorage, params: RunParameters, data: RunData,
           champion: ModelVersion | None, champion_params: RunParameters | None) -> dict[str, Any]:
    contenders = [("challenger", params)] + ([("champion", champion_params)] if champion_params else [])
    n_folds = len(data.folds)
    progress = RunProgress(run_id, sum(cv_fits(p, n_folds) for _, p in contenders) + final_fits(params))
    results: dict[str, ContenderCV] = {}
    start = 0.0
    for name, p in contenders:
        report = (lambda k, m: _store_fold(run_id, k, m, data.test_groups(k))) if name == "challenger" else None
        results[name] = cross_validate_contender(p, data, progress, start, report)
        start += cv_fits(p, n_folds)
    challenger = results["challenger"]
    metrics: dict[str, Any] = {"cv": _cv_summary(challenger, data, params.family),
                               "per_fold": challenger.fold_metrics}
    if challenger.fusion is not None:
        metrics["members_cv"] = challenger.fusion["members"]
        metrics["fusion"] = {"cnn_weights_per_fold": challenger.fusion["nested"]["cnn_weights_per_fold"],
                             "final_cnn_weights": challenger.fusion["final_cnn_weights"]}
    thresholds = oov_thresholds(challenger.oof, data.table.groups)
    if champion is not None and champion_params is not None:
        metrics["champion_cv"] = {**_cv_summary(results["champion"], data, champion_params.family),
                                  "production_version": champion.version}
    with tempfile.TemporaryDirectory() as tmp:
        fused_card = {"name": f"training-run-{run_id}", "training_run": run_id, "parameters": asdict(params),
                      "promotion_note": "a registry version: its stage in the model registry decides whether "
                                        "workers use it (training.registry)"}
        weights = final_fit(params, data, progress, start, Path(tmp), challenger.fusion, fused_card)
        return _register(run_id, storage, params, data, weights, metrics, thresholds)


def _store_fold(run_id: int, fold: int, metrics: dict[str, Any], test_groups: list[str]) -> None:
    with session_scope() as session:
        session.add(FoldMetrics(run_id=run_id, fold=fold, mean_class_accuracy=metrics["mca"],
                                accuracy=metrics["accuracy"], metrics=metrics, test_groups=test_groups,
                                finished_at=utcnow()))


def _register(run_id: int, storage: ObjectStorage, params: RunParameters, data: RunData, weights: Path,
              metrics: dict[str, Any], thresholds: dict[str, Any]) -> dict[str, Any]:
    """Publish the final model (a checkpoint or a fused JSON with its members) and apply the policy."""
    card = {"metrics": metrics, "parameters": asdict(params), "data_hash": data.data_hash,
            "code_version": git_commit().get("commit") or __version__, "tta": params.tta, "family": params.family,
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
                            "family": params.family, "model_version": version.version,
                            "promoted": decision[0], "decision": decision[1]}
        run.status, run.finished_at, run.progress_pct = RunStatus.SUCCEEDED, utcnow(), 100.0
        return {"run_id": run_id, "status": "succeeded", "model_version": version.version,
                "family": params.family, "promoted": decision[0], "decision": decision[1]}


def _finish(run_id: int, status: RunStatus, error: str) -> None:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is not None:
            run.status, run.error, run.finished_at = status, error, utcnow()
