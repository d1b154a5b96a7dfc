"""Fusion of the CNN and texture families: per-class weights on out-of-fold predictions, nested CV, the
fused model file, and the one loader the pipeline uses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis.models.classifier import ModelConfig, create_model, save_checkpoint
from analysis.models.fused import FusedCellClassifier, fuse, load_cell_classifier
from analysis.models.inference import CellClassifier
from analysis.texture_model import TextureModel
from tests.training.test_texture import FAST, crops
from training.datasets import load_manifest
from training.evaluate import evaluate_cells
from training.fusion import choose_weights, nested_fusion_cv, write_fused_model
from training.texture import fit_texture

C = 6


def _members(seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Two members that are each right on different classes: A knows classes 0-2 and 5, B knows 3-5 only
    weakly except where A is lost."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"g{i:02d}" for i in range(30)], 20)
    y = np.repeat(np.arange(30) % C, 20)
    a, b = rng.dirichlet(np.ones(C), len(y)), rng.dirichlet(np.ones(C), len(y))
    good_a, good_b = np.isin(y, [0, 1, 2, 5]), np.isin(y, [3, 4])
    a[good_a, y[good_a]] += 1.5
    b[good_b, y[good_b]] += 1.5
    b[y == 5, 3] += 2.0  # B mistakes class 5 for class 3: only A may decide class 5
    a, b = a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)
    folds = np.array([int(g[1:]) % 5 for g in groups])
    return [a, b], y, groups, folds


def test_fuse_weights_per_class_and_renormalises() -> None:
    a, b = np.array([[0.6, 0.4] + [0] * 4]), np.array([[0.0, 1.0] + [0] * 4])
    w = np.array([[1.0, 0.0, 1, 1, 1, 1], [0.0, 1.0, 0, 0, 0, 0]])
    assert np.allclose(fuse([a, b], w), [[0.6 / 1.6, 1.0 / 1.6, 0, 0, 0, 0]])


def test_chosen_weights_follow_the_member_that_knows_each_class() -> None:
    members, y, groups, _folds = _members()
    w = choose_weights(members, y, groups)
    assert w.shape == (2, C) and np.allclose(w.sum(0), 1)
    fused = fuse(members, w)
    mca = np.mean([np.mean(fused[y == c].argmax(1) == c) for c in range(C)])
    singles = [np.mean([np.mean(m[y == c].argmax(1) == c) for c in range(C)]) for m in members]
    assert mca > max(singles) + 0.1 and w[0, 5] > w[1, 5]


def test_nested_cv_never_scores_a_fold_with_weights_chosen_on_it() -> None:
    members, y, groups, folds = _members()
    calls = []
    import training.fusion as fusion

    original = fusion.choose_weights

    def spy(ms, yy, gg, passes=2):
        calls.append(set(gg.tolist()))
        return original(ms, yy, gg, passes)

    fusion.choose_weights = spy
    try:
        result = nested_fusion_cv(members, y, groups, folds)
    finally:
        fusion.choose_weights = original
    for k, seen in enumerate(calls):
        assert not seen & set(groups[folds == k].tolist())
    assert result["specimen"]["n"] == 30 and len(result["fold_metrics"]) == 5


@pytest.fixture
def member_files(tmp_path: Path) -> tuple[Path, Path, list]:
    cfg = ModelConfig(arch="resnet10_w32", img_size=32)
    cnn = save_checkpoint(create_model(cfg), cfg, tmp_path / "src" / "cnn.safetensors", half=True,
                          extra={"tta": 1})
    cells, y = crops(8)
    from analysis.descriptors import DescriptorSpec, extract

    spec = DescriptorSpec()
    booster = fit_texture(extract(cells, spec), y, FAST)
    _, texture = TextureModel(booster, spec).save(tmp_path / "src" / "texture")
    return cnn, texture, cells


def test_fused_model_file_loads_through_the_one_loader_and_refuses_tampering(member_files, tmp_path: Path) -> None:
    cnn, texture, cells = member_files
    weights = np.stack([np.full(C, 0.3), np.full(C, 0.7)])
    weights[:, 5] = [1.0, 0.0]
    result = {"final_weights": weights, "groups": np.array(["a", "b"] * 12),
              "nested": {"fused_oof": np.full((24, C), 1 / C), "protocol": "test", "cnn_weights_per_fold": {},
                         "cv_mean": {}, "pooled": {}, "specimen": {}},
              "n_groups": 2, "members": {}}
    out = write_fused_model(result, cnn, texture, tmp_path / "ship" / "cells-fused.json", {"name": "test"})
    doc = json.loads(out.read_text())
    assert doc["format"] == "hep2-cell-ensemble/1" and [m["family"] for m in doc["members"]] == ["cnn", "texture"]
    assert "specimen_thresholds" in doc
    fused = load_cell_classifier(out, device="cpu")
    assert isinstance(fused, FusedCellClassifier)
    assert isinstance(load_cell_classifier(cnn, device="cpu"), CellClassifier)  # a CNN alone stays selectable
    probs = fused.predict(cells[:5])
    members = fused.member_predictions(cells[:5])
    assert probs.shape == (5, C) and np.allclose(probs, fuse(members, weights), atol=1e-5)
    booster = out.with_name("cells-fused-texture.txt.gz")
    booster.write_bytes(booster.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_cell_classifier(out, device="cpu")


def test_evaluate_cells_scores_a_fused_model_at_cell_and_specimen_level(member_files, tmp_path: Path,
                                                                       tiny_i3a: Path) -> None:
    cnn, texture, _ = member_files
    result = {"final_weights": np.stack([np.full(C, 0.5), np.full(C, 0.5)]), "groups": np.array(["a", "b"] * 12),
              "nested": {"fused_oof": np.full((24, C), 1 / C), "protocol": "test", "cnn_weights_per_fold": {},
                         "cv_mean": {}, "pooled": {}, "specimen": {}},
              "n_groups": 2, "members": {}}
    out = write_fused_model(result, cnn, texture, tmp_path / "ship" / "cells-fused.json", {"name": "test"})
    scored = evaluate_cells(tiny_i3a, [out], device="cpu")
    assert scored["n_cells"] > 0 and 0 <= scored["mca"] <= 1 and scored["throughput"]["device"] == "cpu"
    assert scored["specimen"]["n"] == len(set(load_manifest(tiny_i3a).groups.tolist()))
