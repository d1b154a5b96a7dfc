"""Model registry on real PostgreSQL + S3: publish, promotion policy, roll-back, workers follow production;
fused versions (several files, each checked on fetch) and CNN versions side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, update

from analysis.analyze import Models
from analysis.descriptors import DescriptorSpec, extract
from analysis.models.classifier import ModelConfig, create_model, save_checkpoint
from analysis.models.fused import FusedCellClassifier, load_cell_classifier
from analysis.segmentation import ClassicalSegmenter
from analysis.texture_model import TextureModel
from db.models import AnalysisAttempt, AuditEvent, ModelStage, ModelTask, ModelVersion, SlideImage
from db.session import session_scope
from hep2.storage import storage_from_settings
from tests.integration import uploads as up
from tests.training.test_texture import FAST, crops
from training import registry
from training.fusion import write_fused_model
from training.texture import fit_texture

pytestmark = pytest.mark.integration
CLASSES = ("homogeneous", "speckled", "nucleolar", "centromere", "nuclear_membrane", "golgi")


def cv(mca: float, recall: dict[str, float] | None = None, signature: str = "folds-A") -> dict:
    return {"mca": mca, "recall": recall or dict.fromkeys(CLASSES, mca), "folds_signature": signature}


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    cfg = ModelConfig(arch="resnet10_w32", img_size=32)
    return save_checkpoint(create_model(cfg), cfg, tmp_path / "cells.safetensors", half=True)


@pytest.fixture
def fused(tmp_path: Path, weights: Path) -> Path:
    """A fused model file (CNN + texture members beside it), as ``training.fusion`` writes it."""
    cells, y = crops(4)
    spec = DescriptorSpec()
    _, texture = TextureModel(fit_texture(extract(cells, spec), y, FAST), spec).save(tmp_path / "texture")
    result = {"final_weights": np.stack([np.full(6, 0.4), np.full(6, 0.6)]), "groups": np.array(["a", "b"] * 6),
              "nested": {"fused_oof": np.full((12, 6), 1 / 6), "protocol": "test", "cnn_weights_per_fold": {},
                         "cv_mean": {}, "pooled": {}, "specimen": {}}, "n_groups": 2, "members": {}}
    return write_fused_model(result, weights, texture, tmp_path / "fused" / "model.json", {"name": "test"})


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


def publish(weights: Path, metrics: dict) -> int:  # a checkpoint, or a fused model's JSON
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
    key = "inbox/registry/after-promotion.png"
    up.analyse_upload(storage_from_settings(), key, up.small_field(3))
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


def test_a_fused_version_holds_its_member_files_each_checked_on_fetch(clean_registry, fused: Path,
                                                                      tmp_path: Path) -> None:
    version_id = publish(fused, {"cv": cv(0.8)})
    storage = storage_from_settings()
    with session_scope() as session:
        row = session.get(ModelVersion, version_id)
        session.expunge(row)
    names = {"model.json", "model-cnn.safetensors", "model-texture.json", "model-texture.txt.gz", "card.json"}
    assert row.family == "fused" and row.entry_file == "model.json" and set(row.files) == names
    for name in names - {"card.json"}:
        assert storage.get(row.artifact_uri + name) == (fused.parent / name).read_bytes()

    entry = registry.fetch(storage, row, tmp_path / "cache")
    assert entry.name == "model.json" and isinstance(load_cell_classifier(entry, device="cpu"), FusedCellClassifier)
    # the row's sha256 is the identity the pipeline records with a result, so results name this version
    models = Models(ClassicalSegmenter(), classifier_weights=entry, device="cpu")
    assert models.classifier.predict(crops(1)[0]).shape == (3, 6)
    assert models.versions()["classifier"]["sha256"] == row.sha256

    member = entry.with_name("model-texture.txt.gz")
    member.write_bytes(member.read_bytes() + b"\0")  # a damaged cache file is downloaded again
    assert registry.fetch(storage, row, tmp_path / "cache") == entry
    assert member.read_bytes() == (fused.parent / "model-texture.txt.gz").read_bytes()

    original = storage.get(row.artifact_uri + "model-cnn.safetensors")
    storage.put(row.artifact_uri + "model-cnn.safetensors", original[:-1] + b"\1")  # tampered in the bucket
    try:
        with pytest.raises(ValueError, match=r"model-cnn\.safetensors .*SHA-256"):
            registry.fetch(storage, row, tmp_path / "fresh-cache")
    finally:
        storage.put(row.artifact_uri + "model-cnn.safetensors", original)


def test_fused_and_cnn_versions_promote_and_roll_back_alike(clean_registry, fused: Path, weights: Path) -> None:
    from hep2.settings import get_settings

    storage, settings = storage_from_settings(), get_settings()

    def resolved() -> Path:
        with session_scope() as session:
            return registry.resolve_weights(session, storage, settings).cell_pattern

    fused_id = publish(fused, {"cv": cv(0.8)})
    assert promote(fused_id)[0] and resolved().name == "model.json"
    cnn_id = publish(weights, {"cv": cv(0.7)})
    ok, _ = promote(cnn_id, force=True)  # a CNN-only version stays selectable
    assert ok and stage(fused_id) is ModelStage.ARCHIVED and resolved().name == registry.WEIGHTS_NAME
    with session_scope() as session:
        assert session.get(ModelVersion, cnn_id).family == "cnn"
        assert registry.rollback(session, ModelTask.CELL_PATTERN, actor="ops@lab").id == fused_id
    assert resolved().name == "model.json"
