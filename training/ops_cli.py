"""Ops commands: ``hep2 train run|status|cancel``, ``hep2 models ...``, ``hep2 datasets ...``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

models_app = typer.Typer(no_args_is_help=True, help="Model registry: list, promote, roll back.")
datasets_app = typer.Typer(no_args_is_help=True, help="Registered training data sets.")


def register(app: typer.Typer, train_app: typer.Typer) -> None:
    """Mount the registry commands on ``hep2`` and the service-run commands on ``hep2 train``."""
    app.add_typer(models_app, name="models")
    app.add_typer(datasets_app, name="datasets")
    train_app.command("run")(train_run)
    train_app.command("status")(train_status)
    train_app.command("cancel")(train_cancel)


def train_run(
    parameters: str = typer.Option("{}", help='Run parameters as JSON, e.g. \'{"epochs": 20, "folds": 5}\'.'),
    wait: bool = typer.Option(False, help="Wait for the run to finish and print its result."),
    actor: str = typer.Option("cli", help="Who asked (audited)."),
) -> None:
    """Queue a cell-classifier training run on the service (queue ``training``)."""
    from db.models import ModelTask
    from db.session import session_scope
    from training.retrain import start_training
    from workers.celery_app import celery_client

    with session_scope() as session:
        run_id = start_training(session, ModelTask.CELL_PATTERN, actor, json.loads(parameters), trigger="cli").id
    result = celery_client().send_task("hep2.train_model", args=[run_id])
    typer.echo(f"training run {run_id} queued")
    if wait:
        typer.echo(json.dumps(result.get(timeout=None), indent=2))


def train_status(run_id: int) -> None:
    """Progress and per-fold metrics of a run."""
    from db.models import TrainingRun
    from db.session import session_scope

    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise typer.BadParameter(f"no training run {run_id}")
        typer.echo(f"run {run.id}: {run.status.value} {run.progress_pct:.0f}% fold {run.current_fold} "
                   f"epoch {run.current_epoch}; snapshot {run.snapshot_rows} rows sha256 {run.snapshot_sha256}")
        for fold in run.fold_metrics:
            typer.echo(f"  fold {fold.fold}: MCA {fold.mean_class_accuracy:.4f} accuracy {fold.accuracy:.4f}")
        if run.mean_metrics:
            typer.echo(json.dumps({k: v for k, v in run.mean_metrics.items() if k != "cv"}, indent=2))
        if run.error:
            typer.echo(f"error: {run.error}")


def train_cancel(run_id: int, actor: str = typer.Option("cli")) -> None:
    """Ask a running run to stop at its next epoch."""
    from db import audit
    from db.models import TrainingRun
    from db.session import session_scope

    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise typer.BadParameter(f"no training run {run_id}")
        run.cancel_requested = True
        audit.record(session, actor, "training.cancel", "training_run", run_id)
    typer.echo(f"cancellation of run {run_id} requested")


@models_app.command("list")
def list_models(task: str = typer.Option("cell_pattern")) -> None:
    """Versions of a task with stage and grouped-CV MCA."""
    from sqlalchemy import select

    from db.models import ModelTask, ModelVersion
    from db.session import session_scope

    with session_scope() as session:
        for v in session.scalars(select(ModelVersion).where(ModelVersion.task == ModelTask(task))
                                 .order_by(ModelVersion.id)):
            mca = (v.metrics.get("cv") or {}).get("mca")
            typer.echo(f"{v.id:>5} {v.version:<32} {v.stage.value:<11} MCA {mca if mca is None else round(mca, 4)}"
                       f"  {v.stage_reason or ''}")


@models_app.command("promote")
def promote(version_id: int, force: bool = typer.Option(False, help="Override the promotion policy."),
            actor: str = typer.Option("cli")) -> None:
    """Promote a candidate (the policy decides unless --force)."""
    from db.session import session_scope
    from training.registry import promote as do_promote

    with session_scope() as session:
        ok, reason = do_promote(session, version_id, actor, force=force)
    typer.echo(("promoted: " if ok else "not promoted: ") + reason)
    raise typer.Exit(0 if ok else 1)


@models_app.command("rollback")
def rollback(task: str = typer.Option("cell_pattern"), actor: str = typer.Option("cli")) -> None:
    """Restore the previous production version."""
    from db.models import ModelTask
    from db.session import session_scope
    from training.registry import rollback as do_rollback

    with session_scope() as session:
        restored = do_rollback(session, ModelTask(task), actor)
        typer.echo(f"production is now {restored.version}")


@datasets_app.command("register")
def register_dataset(name: str, folder: Path = typer.Argument(..., help="Folder with labels.csv (i3a or generic).")
                     ) -> None:
    """Upload a labelled cell folder to object storage and register it for training."""
    from db.session import session_scope
    from hep2.storage import storage_from_settings
    from training.snapshot import register_dataset as do_register

    with session_scope() as session:
        row = do_register(session, storage_from_settings(), name, folder)
        typer.echo(f"dataset {row.name}: {row.rows} cells, sha256 {row.sha256}")


@datasets_app.command("list")
def list_datasets() -> None:
    from sqlalchemy import select

    from db.models import Dataset
    from db.session import session_scope

    with session_scope() as session:
        for d in session.scalars(select(Dataset).order_by(Dataset.name)):
            typer.echo(f"{d.name:<24} {d.rows:>7} cells  {d.manifest_uri}  {d.sha256[:16]}")
