"""Training runs on the service: triggered and scheduled runs, per-fold metrics, reviews in the snapshot,
the leakage guard, cancellation. Small models and a few real I3A cells, on CPU."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from db.models import (
    AnalysisAttempt,
    Cell,
    FoldMetrics,
    ModelStage,
    ModelVersion,
    Review,
    RunStatus,
    SlideImage,
    TrainingRun,
)
from db.session import session_scope
from hep2.storage import storage_from_settings
from tests.integration import uploads as up
from training.snapshot import build_snapshot, register_dataset
from workers.celery_app import create_celery_app

pytestmark = pytest.mark.integration
TINY = {"arch": "resnet10_w32", "img_size": 32, "epochs": 1, "max_steps": 2, "folds": 3, "tta": 1,
        "batch_size": 16, "family": "cnn"}  # the CNN run's machinery; fused runs: test_fused_training.py


def tiny_i3a(shared_data: Path, target: Path, per_group: int = 4, groups_per_class: int = 3,
             with_groups: bool = True) -> Path:
    """A small labels.csv folder of real I3A cells: a few cells from several specimen groups per class."""
    source = shared_data / "i3a-task1"
    with (source / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    chosen, seen = [], {}
    for row in rows:
        key = (row["pattern"], row["specimen_group"])
        groups = {g for (p, g) in seen if p == row["pattern"]}
        if (key in seen and seen[key] >= per_group) or (key not in seen and len(groups) >= groups_per_class):
            continue
        seen[key] = seen.get(key, 0) + 1
        chosen.append(row)
    (target / "images").mkdir(parents=True)
    (target / "masks").mkdir()
    for row in chosen:
        for column in ("image", "mask"):
            (target / row[column]).write_bytes((source / row[column]).read_bytes())
    columns = ["cell_id", "pattern", "image", "mask"] + (["specimen_group"] if with_groups else [])
    with (target / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(chosen)
    return target


def wait_run(run_id: int, timeout_s: float = 300) -> TrainingRun:
    deadline = time.monotonic() + timeout_s
    while True:
        with session_scope() as session:
            run = session.get(TrainingRun, run_id)
            if run.status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED):
                session.expunge(run)
                return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.status.value}"
        time.sleep(1)


def latest_run_id() -> int:
    with session_scope() as session:
        return session.scalar(select(TrainingRun.id).order_by(TrainingRun.id.desc()).limit(1))


def register_tiny_i3a(shared_data: Path, tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    """Register a :func:`tiny_i3a` folder as the dataset ``name``; returns the name."""
    folder = tiny_i3a(shared_data, tmp_path_factory.mktemp(name))
    with session_scope() as session:
        register_dataset(session, storage_from_settings(), name, folder)
    return name


@pytest.fixture(scope="module")
def dataset(service_env: dict[str, str], shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return register_tiny_i3a(shared_data, tmp_path_factory, "tiny-i3a")


def test_cli_triggered_and_scheduled_runs_register_candidates(dataset: str, celery_worker: str,
                                                             service_env: dict[str, str]) -> None:
    params = json.dumps({**TINY, "datasets": [dataset]})
    out = subprocess.run([sys.executable, "-m", "cli.main", "train", "run", "--parameters", params],
                         env={**os.environ, **service_env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first = wait_run(latest_run_id())
    assert first.status is RunStatus.SUCCEEDED, first.error
    assert first.trigger == "cli" and first.snapshot_sha256 and first.snapshot_rows > 30

    started = create_celery_app().send_task("hep2.scheduled_retrain", args=["schedule"],  # as beat sends it
                                            kwargs={"parameters": {**TINY, "datasets": [dataset]}}).get(timeout=60)
    assert started["started"], started
    second = wait_run(started["started"])
    assert second.status is RunStatus.SUCCEEDED, second.error
    assert second.trigger == "schedule" and second.snapshot_sha256 == first.snapshot_sha256

    with session_scope() as session:
        for run in (first, second):
            folds = session.scalars(select(FoldMetrics).where(FoldMetrics.run_id == run.id)).all()
            assert sorted(f.fold for f in folds) == [0, 1, 2]
            assert all(0 <= f.mean_class_accuracy <= 1 and f.test_groups for f in folds)
            version = session.scalar(select(ModelVersion).where(ModelVersion.training_run_id == run.id))
            assert version is not None and len(version.metrics["per_fold"]) == 3
        decision = session.get(TrainingRun, second.id).mean_metrics
    # the second run was compared with whatever was production, on the same folds, and the decision kept
    assert decision["decision"] and "promoted" in decision


def test_reviewed_corrections_enter_the_next_snapshot(dataset: str, celery_worker: str) -> None:
    storage = storage_from_settings()
    key = "inbox/reviews/field.png"
    up.analyse_upload(storage, key, up.small_field(2))
    with session_scope() as session:
        cell = session.scalar(select(Cell).join(AnalysisAttempt).join(SlideImage).where(SlideImage.key == key)
                              .order_by(Cell.index).limit(1))
        session.add(Review(cell_id=cell.id, reviewer="dr.k", field="cell_pattern",
                           old_value=cell.predicted_pattern, new_value="golgi"))
        cell_id = cell.id
    with session_scope() as session:
        run = TrainingRun(task="cell_pattern", trigger="test", parameters={})
        session.add(run)
        session.flush()
        manifest_key, table = build_snapshot(session, storage, run.id, [dataset])
    rows = list(csv.DictReader(storage.get(manifest_key).decode().splitlines()))
    reviewed = [r for r in rows if r["cell_id"] == f"review:{cell_id}"]
    assert len(reviewed) == 1 and reviewed[0]["pattern"] == "golgi" and reviewed[0]["specimen_group"]
    crop = table.read_crop(next(i for i, r in enumerate(table.records) if r.cell_id == f"review:{cell_id}"))
    assert crop[0].ndim == 2 and crop[1] is not None and crop[1].any()


def test_a_dataset_without_groups_cannot_train(celery_worker: str, shared_data: Path, tmp_path: Path) -> None:
    folder = tiny_i3a(shared_data, tmp_path / "nogroups", with_groups=False)
    with session_scope() as session:
        register_dataset(session, storage_from_settings(), "no-groups", folder)
    params = json.dumps({**TINY, "datasets": ["no-groups"], "include_reviews": False})
    from training.retrain import start_training

    with session_scope() as session:
        run_id = start_training(session, "cell_pattern", "test", json.loads(params)).id
    create_celery_app().send_task("hep2.train_model", args=[run_id])
    run = wait_run(run_id)
    assert run.status is RunStatus.FAILED and "group" in run.error


def test_cancellation_stops_a_run(dataset: str, celery_worker: str) -> None:
    from training.retrain import start_training

    with session_scope() as session:
        run_id = start_training(session, "cell_pattern", "test",
                                {**TINY, "datasets": [dataset], "max_steps": None, "epochs": 50}).id
    create_celery_app().send_task("hep2.train_model", args=[run_id])
    deadline = time.monotonic() + 120
    while True:
        with session_scope() as session:
            run = session.get(TrainingRun, run_id)
            if run.current_epoch:
                run.cancel_requested = True
                break
        assert time.monotonic() < deadline
        time.sleep(0.5)
    run = wait_run(run_id)
    assert run.status is RunStatus.CANCELLED and "cancelled" in run.error
    with session_scope() as session:
        assert session.scalar(select(ModelVersion).where(ModelVersion.training_run_id == run_id)) is None
    assert ModelStage.PRODUCTION  # registry untouched by a cancelled run
