"""Operations: failed/rejected jobs and re-run, queue depth, model versions (promote, roll back), training runs.

Every mutating route calls the service layer (:mod:`services`), which the ``hep2`` CLI calls too: the same
audit rows, the same state checks; the routes translate its errors into 404 / 409.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path as FsPath
from typing import Annotated, Any

import redis
from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth import Ops, SessionDep, Viewer, get_or_404
from api.schemas import ORM, Comment, ModelVersionOut
from db.models import (
    TRAINABLE_TASKS,
    AnalysisAttempt,
    FoldMetrics,
    ModelTask,
    ModelVersion,
    SlideImage,
    SlideStatus,
    TrainingRun,
)
from hep2.settings import get_settings
from hep2.storage import storage_from_settings
from services import ConflictError, NotFoundError
from services import jobs as job_service
from services import models as model_service
from services import training_runs as run_service
from workers.routing import QUEUES

router = APIRouter(prefix="/v1", tags=["operations"])
DbPath = Annotated[int, Path(ge=1, le=2**31 - 1)]
ParamKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
ParamStr = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\x00-\x1f\x7f]*$")]
ParamValue = bool | int | Annotated[float, Field(allow_inf_nan=False)] | ParamStr


class JobOut(BaseModel):
    slide_id: int
    key: str
    status: str
    reason: str | None
    attempts: int
    last_error: str | None
    worker: str | None
    updated_at: datetime


class RerunOut(BaseModel):
    slide_id: int
    status: str


class PromoteIn(BaseModel):
    force: bool = Field(False, description="Promote even if the policy would keep the champion")
    comment: Comment | None = None


class RollbackIn(BaseModel):
    task: ModelTask


class PromotionOut(BaseModel):
    promoted: bool
    message: str
    version: ModelVersionOut


class FoldOut(ORM):
    fold: int
    mean_class_accuracy: float
    accuracy: float
    metrics: dict[str, Any]
    finished_at: datetime


class RunOut(ORM):
    id: int
    task: str
    status: str
    trigger: str
    requested_by: str | None
    parameters: dict[str, Any]
    folds: int | None
    current_fold: int | None
    current_epoch: int | None
    progress_pct: float
    cancel_requested: bool
    mean_metrics: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunDetail(RunOut):
    fold_metrics: list[FoldOut]
    confusion: dict[str, Any] | None = Field(None, description="Sum of the folds' test confusion matrices")


class CardFold(BaseModel):
    fold: int | None
    mean_class_accuracy: float
    accuracy: float | None


class CardMetrics(BaseModel):
    """Grouped-CV results from the model card (the bundled model has no training run on this service)."""

    protocol: str | None
    mca: float | None
    mca_std: float | None
    pooled_mca: float | None
    folds: list[CardFold]
    confusion: dict[str, Any] | None
    date: str | None
    n_cells: int | None
    n_groups: int | None


class ModelDetail(BaseModel):
    version: ModelVersionOut
    run: RunDetail | None
    card: CardMetrics | None = Field(None, description="grouped-CV metrics from the model card, if it has them")


class TrainingIn(BaseModel):
    task: ModelTask = ModelTask.CELL_PATTERN
    parameters: dict[ParamKey, ParamValue] = Field(default_factory=dict, max_length=32)


# ---------------------------------------------------------------- jobs and queues
@router.get("/jobs", response_model=list[JobOut], tags=["operations"])
def list_jobs(session: SessionDep, _: Viewer,
              status_: Annotated[list[SlideStatus] | None, Query(alias="status")] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 100) -> list[JobOut]:
    """Slides in the given statuses (default failed and rejected), newest change first, with reasons."""
    wanted = status_ or [SlideStatus.FAILED, SlideStatus.REJECTED]
    slides = session.scalars(select(SlideImage).where(SlideImage.status.in_(wanted))
                             .order_by(SlideImage.updated_at.desc(), SlideImage.id.desc()).limit(limit)).all()
    out = []
    for slide in slides:
        last: AnalysisAttempt | None = slide.attempts[-1] if slide.attempts else None
        out.append(JobOut(slide_id=slide.id, key=slide.key, status=slide.status.value, reason=slide.status_reason,
                          attempts=len(slide.attempts), last_error=last.error if last else None,
                          worker=last.worker if last else None, updated_at=slide.updated_at))
    return out


@router.post("/jobs/{slide_id}/rerun", response_model=RerunOut, status_code=status.HTTP_202_ACCEPTED)
def rerun_job(slide_id: DbPath, session: SessionDep, who: Ops) -> RerunOut:
    """Queue a failed (or finished) slide again; rejected input stays rejected (409)."""
    try:
        slide = job_service.rerun(session, slide_id, who.actor)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return RerunOut(slide_id=slide_id, status=slide.status.value)


def queue_depths() -> dict[str, int | None]:
    """Messages waiting per queue: ``LLEN`` on a Redis broker, files in the embedded file broker, else null."""
    settings = get_settings()
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://")):

        client = redis.Redis.from_url(url, socket_timeout=2)
        # kombu keeps priority levels in "<queue>\x06\x16<n>" lists beside the plain one
        return {q: int(sum(client.llen(k) for k in [q, *(f"{q}\x06\x16{p}" for p in (3, 6, 9))])) for q in QUEUES}
    if url.startswith("filesystem://"):
        folder = FsPath(settings.state_dir / "broker" / "messages")
        names = [p.name for p in folder.glob("*.msg")] if folder.is_dir() else []
        return {q: sum(n.endswith(f".{q}.msg") for n in names) for q in QUEUES}
    return dict.fromkeys(QUEUES)


@router.get("/queues", response_model=dict[str, int | None])
def get_queues(_: Viewer) -> dict[str, int | None]:
    """Queue depth per queue (null when the broker cannot tell)."""
    return queue_depths()


# ---------------------------------------------------------------- models
def run_detail(session: Session, run: TrainingRun) -> RunDetail:
    folds = list(session.scalars(select(FoldMetrics).where(FoldMetrics.run_id == run.id).order_by(FoldMetrics.fold)))
    confusion = None
    for fold in folds:
        matrix = (fold.metrics or {}).get("confusion", {})
        if not matrix.get("matrix"):
            continue
        if confusion is None:
            confusion = {"labels": matrix.get("labels"), "matrix": [list(r) for r in matrix["matrix"]]}
        elif len(matrix["matrix"]) == len(confusion["matrix"]):
            confusion["matrix"] = [[a + b for a, b in zip(r1, r2, strict=False)]
                                   for r1, r2 in zip(confusion["matrix"], matrix["matrix"], strict=False)]
    base = RunOut.model_validate(run).model_dump()
    return RunDetail(**base, fold_metrics=[FoldOut.model_validate(f) for f in folds], confusion=confusion)


def _mca(version: ModelVersion, card: dict[str, Any] | None) -> float | None:
    metrics = version.metrics or {}
    value = metrics.get("mca")
    value = value.get("mean") if isinstance(value, dict) else value
    value = value if value is not None else ((metrics.get("cv") or {}).get("summary") or {}).get("mca", {})
    value = value.get("mean") if isinstance(value, dict) else value
    return value if isinstance(value, int | float) else (card or {}).get("mca")


@router.get("/models", response_model=list[ModelVersionOut])
def list_models(session: SessionDep, _: Viewer, task: ModelTask | None = None) -> list[ModelVersionOut]:
    """Model versions with metrics, newest first; ``mca``: grouped-CV mean class accuracy (metrics or card)."""
    query = select(ModelVersion).order_by(ModelVersion.id.desc())
    storage = storage_from_settings()
    out = []
    for version in session.scalars(query.where(ModelVersion.task == task) if task else query):
        item = ModelVersionOut.model_validate(version)
        item.mca = _mca(version, model_service.card_metrics(model_service.model_card(version, storage)))
        out.append(item)
    return out


@router.get("/models/{version_id}", response_model=ModelDetail)
def get_model(version_id: DbPath, session: SessionDep, _: Viewer) -> ModelDetail:
    """One version with its training run's per-fold metrics and pooled confusion matrix, and the grouped-CV
    metrics its model card records (for the bundled model, the only record of them)."""
    version = get_or_404(session, ModelVersion, version_id, "model version")
    run = session.get(TrainingRun, version.training_run_id) if version.training_run_id else None
    card = model_service.card_metrics(model_service.model_card(version, storage_from_settings()))
    item = ModelVersionOut.model_validate(version)
    item.mca = _mca(version, card)
    return ModelDetail(version=item, run=run_detail(session, run) if run else None,
                       card=CardMetrics.model_validate(card) if card else None)


@router.get("/training-tasks", response_model=list[str])
def training_tasks(_: Viewer) -> list[str]:
    """The tasks a training run can be started for (others are refused with 422)."""
    return [t.value for t in TRAINABLE_TASKS]


@router.post("/models/{version_id}/promote", response_model=PromotionOut)
def promote_model(version_id: DbPath, body: PromoteIn, session: SessionDep, who: Ops) -> PromotionOut:
    """Promote a version through the registry's policy (``force`` overrides it); 409 when refused."""
    try:
        version = model_service.promote(session, version_id, who.actor, force=body.force, comment=body.comment)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ConflictError as exc:  # the refusal is recorded (stage_reason, audit) too
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return PromotionOut(promoted=True, message=version.stage_reason or "promoted",
                        version=ModelVersionOut.model_validate(version))


@router.post("/models/rollback", response_model=ModelVersionOut)
def rollback_model(body: RollbackIn, session: SessionDep, who: Ops) -> ModelVersion:
    """Put the previous production version of ``task`` back (409 when there is none)."""
    try:
        return model_service.rollback(session, body.task, who.actor)
    except ConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


# ---------------------------------------------------------------- training runs
@router.get("/training-runs", response_model=list[RunOut])
def list_runs(session: SessionDep, _: Viewer, task: ModelTask | None = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[TrainingRun]:
    """Training runs, newest first, with progress."""
    query = select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)
    return list(session.scalars(query.where(TrainingRun.task == task) if task else query))


@router.get("/training-runs/{run_id}", response_model=RunDetail)
def get_run(run_id: DbPath, session: SessionDep, _: Viewer) -> RunDetail:
    """One run: progress, per-fold metrics as they finish, pooled confusion matrix."""
    return run_detail(session, get_or_404(session, TrainingRun, run_id, "training run"))


@router.post("/training-runs", response_model=RunOut, status_code=status.HTTP_202_ACCEPTED)
def start_run(body: TrainingIn, session: SessionDep, who: Ops) -> TrainingRun:
    """Queue a training run (task ``hep2.train_model`` on the ``training`` queue); 422 for unknown parameters."""
    try:
        return run_service.start_run(session, body.task, who.actor, dict(body.parameters), trigger="api")
    except (TypeError, ValueError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


@router.post("/training-runs/{run_id}/cancel", response_model=RunOut, status_code=status.HTTP_202_ACCEPTED)
def cancel_run(run_id: DbPath, session: SessionDep, who: Ops) -> TrainingRun:
    """Ask a queued or running run to stop (the trainer checks ``cancel_requested``); 409 if it has ended."""
    try:
        return run_service.cancel_run(session, run_id, who.actor)
    except NotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except ConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc

