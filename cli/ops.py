"""Operations: ``hep2 jobs ...``, ``hep2 train run|status|cancel``, ``hep2 models ...``, ``hep2 datasets ...``.

Every mutating command calls the service layer (:mod:`services`), as the API's routes do.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from sqlalchemy import select

from cli.apps import datasets_app, jobs_app, models_app, train_app
from db.models import Dataset, ModelTask, ModelVersion, SlideImage, SlideStatus, TrainingRun
from db.session import session_scope
from hep2.storage import storage_from_settings
from services import ConflictError, NotFoundError
from services import datasets as dataset_service
from services import jobs as job_service
from services import models as model_service
from services import training_runs as run_service


# ---------------------------------------------------------------- jobs
@jobs_app.command("list")
def list_jobs(status: str = typer.Option("failed", help="Slide status: failed, rejected, queued, ..."),
              limit: int = typer.Option(50)) -> None:
    """Slides in a status, newest first, with their reason."""
    with session_scope() as session:
        slides = session.scalars(select(SlideImage).where(SlideImage.status == SlideStatus(status))
                                 .order_by(SlideImage.updated_at.desc()).limit(limit)).all()
        for slide in slides:
            typer.echo(f"{slide.id:>7}  {slide.status.value:<12} {slide.key}  {slide.status_reason or ''}")
        typer.echo(f"{len(slides)} slide(s) {status}")


@jobs_app.command("rerun")
def rerun(slide_ids: list[int] = typer.Argument(..., help="Slide ids to analyse again."),
          actor: str = typer.Option("cli", help="Who asked (audited).")) -> None:
    """Queue failed (or finished) slides again; rejected input stays rejected."""
    failed = False
    for slide_id in slide_ids:
        with session_scope() as session:
            try:
                job_service.rerun(session, slide_id, actor)
            except (NotFoundError, ConflictError) as exc:
                typer.echo(f"slide {slide_id} not queued: {exc}", err=True)
                failed = True
                continue
        typer.echo(f"slide {slide_id} queued")
    raise typer.Exit(1 if failed else 0)


@jobs_app.command("sweep")
def sweep() -> None:
    """Queue the inbox sweep and the stale-job re-queue now (beat does it on a schedule)."""
    for task in job_service.sweep_now():
        typer.echo(f"{task} queued")


# ---------------------------------------------------------------- training runs
@train_app.command("run")
def train_run(
    parameters: str = typer.Option("{}", help='Run parameters as JSON, e.g. \'{"epochs": 20, "folds": 5}\'.'),
    wait: bool = typer.Option(False, help="Wait for the run to finish and print its result."),
    actor: str = typer.Option("cli", help="Who asked (audited)."),
) -> None:
    """Queue a cell-classifier training run on the service (queue ``training``)."""
    with session_scope() as session:
        try:
            run = run_service.start_run(session, ModelTask.CELL_PATTERN, actor, json.loads(parameters), trigger="cli")
        except (TypeError, ValueError) as exc:
            raise typer.BadParameter(str(exc)) from exc
        run_id, task_id = run.id, run.celery_task_id
    typer.echo(f"training run {run_id} queued")
    if wait and task_id:
        from workers.celery_app import celery_client  # only to wait for the result

        typer.echo(json.dumps(celery_client().AsyncResult(task_id).get(timeout=None), indent=2))


@train_app.command("status")
def train_status(run_id: int) -> None:
    """Progress and per-fold metrics of a run."""
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise typer.BadParameter(f"no training run {run_id}")
        typer.echo(f"run {run.id} ({run.parameters.get('family', 'cnn')}): {run.status.value} "
                   f"{run.progress_pct:.0f}% fold {run.current_fold} epoch {run.current_epoch}; "
                   f"snapshot {run.snapshot_rows} rows sha256 {run.snapshot_sha256}")
        for fold in run.fold_metrics:
            typer.echo(f"  fold {fold.fold}: MCA {fold.mean_class_accuracy:.4f} accuracy {fold.accuracy:.4f}")
        if run.mean_metrics:
            typer.echo(json.dumps({k: v for k, v in run.mean_metrics.items() if k != "cv"}, indent=2))
        if run.error:
            typer.echo(f"error: {run.error}")


@train_app.command("cancel")
def train_cancel(run_id: int, actor: str = typer.Option("cli", help="Who asked (audited).")) -> None:
    """Ask a queued or running run to stop at its next epoch or texture fold; exit 1 if it has already ended."""
    with session_scope() as session:
        try:
            run_service.cancel_run(session, run_id, actor)
        except NotFoundError as exc:
            raise typer.BadParameter(str(exc)) from exc
        except ConflictError as exc:
            typer.echo(f"not cancelled: {exc}", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"cancellation of run {run_id} requested")


# ---------------------------------------------------------------- models
@models_app.command("list")
def list_models(task: str = typer.Option("cell_pattern")) -> None:
    """Versions of a task with stage, family (cnn | fused) and grouped-CV MCA."""
    with session_scope() as session:
        for v in session.scalars(select(ModelVersion).where(ModelVersion.task == ModelTask(task))
                                 .order_by(ModelVersion.id)):
            mca = (v.metrics.get("cv") or {}).get("mca")
            typer.echo(f"{v.id:>5} {v.version:<32} {v.stage.value:<11} {v.family or '':<6} "
                       f"MCA {mca if mca is None else round(mca, 4)}  {v.stage_reason or ''}")


@models_app.command("promote")
def promote(version_id: int, force: bool = typer.Option(False, help="Override the promotion policy."),
            actor: str = typer.Option("cli")) -> None:
    """Promote a candidate (the policy decides unless --force)."""
    with session_scope() as session:
        try:
            version = model_service.promote(session, version_id, actor, force=force)
        except NotFoundError as exc:
            raise typer.BadParameter(str(exc)) from exc
        except ConflictError as exc:
            typer.echo(f"not promoted: {exc}")
            raise typer.Exit(1) from exc
        typer.echo(f"promoted: {version.stage_reason}")


@models_app.command("rollback")
def rollback(task: str = typer.Option("cell_pattern"), actor: str = typer.Option("cli")) -> None:
    """Restore the previous production version."""
    with session_scope() as session:
        try:
            restored = model_service.rollback(session, task, actor)
        except ConflictError as exc:
            typer.echo(f"not rolled back: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"production is now {restored.version}")


# ---------------------------------------------------------------- datasets
@datasets_app.command("register")
def register_dataset(name: str, folder: Path = typer.Argument(..., help="Folder with labels.csv (i3a or generic)."),
                     actor: str = typer.Option("cli", help="Who asked (audited).")) -> None:
    """Upload a labelled cell folder to object storage and register it for training."""
    with session_scope() as session:
        row = dataset_service.register_dataset(session, storage_from_settings(), name, folder, actor)
        typer.echo(f"dataset {row.name}: {row.rows} cells, sha256 {row.sha256}")


@datasets_app.command("list")
def list_datasets() -> None:
    """Registered data sets with their size and hash."""
    with session_scope() as session:
        for d in session.scalars(select(Dataset).order_by(Dataset.name)):
            typer.echo(f"{d.name:<24} {d.rows:>7} cells  {d.manifest_uri}  {d.sha256[:16]}")
