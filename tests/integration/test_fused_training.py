"""Fused training runs on the service (issue 15): CNN + texture cross-validated on the same folds, fused
nested, published as one version that workers load; a CNN run against a fused production version.
Small models, a few LightGBM rounds and a few real I3A cells, on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update

from db.models import AnalysisAttempt, FoldMetrics, ModelStage, ModelTask, ModelVersion, SlideImage, TrainingRun
from db.session import session_scope
from hep2.storage import storage_from_settings
from tests.integration import uploads as up
from tests.integration.test_training_runs import TINY, register_tiny_i3a, wait_run
from training.metrics import CLASS_NAMES
from training.retrain import start_training
from workers.celery_app import create_celery_app

pytestmark = pytest.mark.integration
FUSED = {**TINY, "family": "fused", "texture_params": {"num_boost_round": 5, "num_leaves": 4, "min_data_in_leaf": 2}}


@pytest.fixture(scope="module")
def dataset(service_env: dict[str, str], shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return register_tiny_i3a(shared_data, tmp_path_factory, "tiny-i3a-fused")


def run(parameters: dict) -> TrainingRun:
    with session_scope() as session:
        run_id = start_training(session, "cell_pattern", "test", parameters).id
    create_celery_app().send_task("hep2.train_model", args=[run_id])
    return wait_run(run_id)


def version_of(run_id: int) -> ModelVersion:
    with session_scope() as session:
        version = session.scalar(select(ModelVersion).where(ModelVersion.training_run_id == run_id))
        session.expunge(version)
        return version


def test_a_fused_run_registers_one_version_that_workers_load(dataset: str, celery_worker: str) -> None:
    with session_scope() as session:  # no production version: the policy promotes the first candidate
        session.execute(update(ModelVersion).where(ModelVersion.task == ModelTask.CELL_PATTERN)
                        .values(stage=ModelStage.ARCHIVED))
    done = run({**FUSED, "datasets": [dataset], "include_reviews": False})
    assert done.status.value == "succeeded", done.error
    assert done.progress_pct == 100 and done.mean_metrics["family"] == "fused" and done.mean_metrics["promoted"]

    version = version_of(done.id)
    assert version.stage is ModelStage.PRODUCTION and version.family == "fused"
    assert {"model.json", "model-cnn.safetensors", "model-cnn.json", "model-texture.json",
            "model-texture.txt.gz", "card.json"} == set(version.files)
    cv, per_fold = version.metrics["cv"], version.metrics["per_fold"]
    # the run's CV is the fused one: its MCA is the mean of the nested fused test folds, not a member's
    assert cv["family"] == "fused" and np.isclose(cv["mca"], np.mean([f["mca"] for f in per_fold]))
    assert set(version.metrics["members_cv"]) == {"cnn", "texture"}
    assert len(version.metrics["fusion"]["final_cnn_weights"]) == len(CLASS_NAMES)
    with session_scope() as session:
        folds = session.scalars(select(FoldMetrics).where(FoldMetrics.run_id == done.id)
                                .order_by(FoldMetrics.fold)).all()
        assert [f.fold for f in folds] == [0, 1, 2] and all(f.test_groups for f in folds)
        assert [f.mean_class_accuracy for f in folds] == [f["mca"] for f in per_fold]
        assert all(set(f.metrics["members"]) == {"cnn", "texture"} and len(f.metrics["cnn_weights"]) == 6
                   for f in folds)
        held_out = [g for f in folds for g in f.test_groups]
        assert len(held_out) == len(set(held_out)) == done.snapshot_rows // 4  # 4 cells per specimen group

    storage = storage_from_settings()
    card = storage.get(version.artifact_uri + "model.json")
    assert b'"specimen_thresholds"' in card and b'"hep2-cell-ensemble/1"' in card

    key = "inbox/fused/field.png"
    up.analyse_upload(storage, key, up.small_field(4))
    with session_scope() as session:
        attempt = session.scalar(select(AnalysisAttempt).join(SlideImage).where(SlideImage.key == key))
        assert attempt.finished_at is not None and attempt.error is None
        used = {mv.id for mv in attempt.model_versions}
    assert version.id in used  # the worker analysed with the fused version (its identity hash matched)


def test_a_cnn_run_is_compared_with_a_fused_production_on_the_same_folds(dataset: str, celery_worker: str) -> None:
    with session_scope() as session:
        production = session.scalar(select(ModelVersion).where(ModelVersion.task == ModelTask.CELL_PATTERN,
                                                               ModelVersion.stage == ModelStage.PRODUCTION))
    if production is None or production.family != "fused":
        pytest.skip("needs the fused production version of the test above")
    done = run({**TINY, "datasets": [dataset], "include_reviews": False, "auto_promote": False})
    assert done.status.value == "succeeded", done.error
    version = version_of(done.id)
    assert version.family == "cnn" and version.entry_file == "weights.safetensors"
    mine, theirs = version.metrics["cv"], version.metrics["champion_cv"]
    assert mine["family"] == "cnn" and theirs["family"] == "fused"
    assert mine["folds_signature"] == theirs["folds_signature"] and theirs["production_version"] == production.version
    assert "members_cv" not in version.metrics and not done.mean_metrics["promoted"]
