"""Model registry on real PostgreSQL + S3: publish, promotion policy, roll-back, workers follow production."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update

from analysis.models.classifier import ModelConfig, create_model, save_checkpoint
from db.models import AnalysisAttempt, AuditEvent, ModelStage, ModelTask, ModelVersion, SlideImage
from db.session import session_scope
from hep2.storage import storage_from_settings
from tests.integration import uploads as up
from training import registry
from workers.celery_app import create_celery_app

pytestmark = pytest.mark.integration
CLASSES = ("homogeneous", "speckled", "nucleolar", "centromere", "nuclear_membrane", "golgi")


def cv(mca: float, recall: dict[str, float] | None = None, signature: str = "folds-A") -> dict:
    return {"mca": mca, "recall": recall or dict.fromkeys(CLASSES, mca), "folds_signature": signature}


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    cfg = ModelConfig(arch="resnet10_w32", img_size=32)
    return save_checkpoint(create_model(cfg), cfg, tmp_path / "cells.safetensors", half=True)


@pytest.fixture
def clean_registry(service_env: dict[str, str]):
    """Each test starts without cell-pattern versions and leaves none in production."""
    def archive_all() -> None:
        with session_scope() as session:
            session.execute(update(ModelVersion).where(ModelVersion.task == ModelTask.CELL_PATTERN)
                            .values(stage=ModelStage.ARCHIVED, promoted_at=None))
    archive_all()
    yield
    archive_all()


def publish(weights: Path, metrics: dict) -> int:
    with session_scope() as session:
        row = registry.publish(session, storage_from_settings(), ModelTask.CELL_PATTERN, weights,
                               {"metrics": metrics, "data_hash": "d" * 64, "code_version": "test"}, actor="ops")
        return row.id


def promote(version_id: int, force: bool = False) -> tuple[bool, str]:
    with session_scope() as session:
        return registry.promote(session, version_id, actor="ops@lab", force=force)


def stage(version_id: int) -> ModelStage:
    with session_scope() as session:
        return session.get(ModelVersion, version_id).stage


def test_publish_stores_artefacts_and_a_candidate(clean_registry, weights: Path) -> None:
    version_id = publish(weights, {"cv": cv(0.8)})
    with session_scope() as session:
        row = session.get(ModelVersion, version_id)
        assert row.stage is ModelStage.CANDIDATE and row.artifact_uri.startswith("models/cell_pattern/")
        key = row.artifact_uri + registry.WEIGHTS_NAME
    assert storage_from_settings().get(key) == weights.read_bytes()


def test_promotion_policy_rollback_and_audit(clean_registry, weights: Path) -> None:
    first = publish(weights, {"cv": cv(0.80)})
    assert promote(first) == (True, "no production version for this task")
    with session_scope() as session:
        champion = session.get(ModelVersion, first).version

    better = publish(weights, {"cv": cv(0.85), "champion_cv": {**cv(0.80), "production_version": champion}})
    worse = publish(weights, {"cv": cv(0.79), "champion_cv": {**cv(0.80), "production_version": champion}})
    golgi_drop = publish(weights, {"cv": cv(0.86, {**dict.fromkeys(CLASSES, 0.9), "golgi": 0.70}),
                                   "champion_cv": {**cv(0.80), "production_version": champion}})
    other_folds = publish(weights, {"cv": cv(0.9), "champion_cv": {**cv(0.8, signature="folds-B"),
                                                                   "production_version": champion}})

    ok, reason = promote(worse)
    assert not ok and "gain -0.0100" in reason and stage(worse) is ModelStage.CANDIDATE
    ok, reason = promote(golgi_drop)
    assert not ok and "recall of golgi falls 0.100" in reason
    ok, reason = promote(other_folds)
    assert not ok and "same folds" in reason
    ok, reason = promote(better)
    assert ok and stage(better) is ModelStage.PRODUCTION and stage(first) is ModelStage.ARCHIVED

    with session_scope() as session:
        restored = registry.rollback(session, ModelTask.CELL_PATTERN, actor="ops@lab")
        assert restored.id == first
    assert stage(first) is ModelStage.PRODUCTION and stage(better) is ModelStage.ARCHIVED

    ok, reason = promote(worse, force=True)
    assert ok and reason.startswith("forced by ops@lab")
    with session_scope() as session:
        assert session.get(ModelVersion, worse).stage_reason.startswith("forced")
        actions = [e.action for e in session.scalars(select(AuditEvent).where(AuditEvent.entity_type ==
                                                                                "model_version"))]
    assert {"model.publish", "model.promote", "model.promotion_refused", "model.rollback"} <= set(actions)


def test_worker_uses_the_new_production_version(clean_registry, weights: Path, celery_worker: str) -> None:
    version_id = publish(weights, {"cv": cv(0.8)})
    assert promote(version_id)[0]
    storage = storage_from_settings()
    key = "inbox/registry/after-promotion.png"
    up.upload(storage, [(key, up.small_field(3))])
    create_celery_app().send_task("hep2.register_upload", args=[key])
    up.wait_final([key])
    with session_scope() as session:
        attempt = session.scalar(select(AnalysisAttempt).join(SlideImage).where(SlideImage.key == key))
        used = {(mv.task, mv.id) for mv in attempt.model_versions}
    assert (ModelTask.CELL_PATTERN, version_id) in used


def test_worker_model_cache_applies_the_lab_segmenter_parameters(service_env: dict[str, str], tmp_path) -> None:
    from analysis.config import load_config
    from analysis.segmentation import ClassicalSegmenter
    from hep2.settings import Settings
    from workers.model_cache import ModelCache

    lab = tmp_path / "lab.toml"
    lab.write_text("[segmentation]\ndot_radius = 1\n")
    settings, cache = Settings(pipeline_config=lab, segmenter="classical"), ModelCache()
    storage = storage_from_settings()
    with session_scope() as session:
        first = cache.get(session, storage, settings, load_config(lab))
        assert first.segmenter == ClassicalSegmenter(dot_radius=1)
        assert cache.get(session, storage, settings, load_config(lab)) is first  # unchanged: kept warm
        lab.write_text("[segmentation]\ndot_radius = 2\nmin_area = 60\n")
        second = cache.get(session, storage, settings, load_config(lab))
    assert second is not first and second.segmenter == ClassicalSegmenter(dot_radius=2, min_area=60)
    assert second.versions()["segmenter"]["params"]["dot_radius"] == 2
