from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analysis.models.inference import CellClassifier
from cli.main import app

runner = CliRunner()


def _invoke(*args: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.data
@pytest.mark.slow
def test_train_grouped_export_and_evaluate_end_to_end(tiny_i3a: Path, tmp_path: Path) -> None:
    run, weights = tmp_path / "run", tmp_path / "weights"
    out = _invoke("train", "cells", "--data", tiny_i3a, "--out", run, "--protocol", "grouped", "--folds", "2",
                  "--model", "resnet10_w32", "--epochs", "2", "--max-steps", "3", "--img-size", "32",
                  "--tta", "8", "--no-progress", "--export", "tiny", "--export-dir", weights)
    assert "grouped: MCA" in out
    cv = json.loads((run / "cv.json").read_text())
    assert cv["n_cells"] == 120 and len(cv["fold_info"]) == 2
    for info in cv["fold_info"]:  # the test groups of the folds are disjoint, every cell tested once
        assert info["n_test"] > 0
    assert not set(cv["fold_info"][0]["test_groups"]) & set(cv["fold_info"][1]["test_groups"])
    assert sum(i["n_test"] for i in cv["fold_info"]) == 120
    assert (run / "fold1" / "confusion.png").is_file() and (run / "oof.csv").read_text().count("\n") == 121
    card = json.loads((weights / "tiny.json").read_text())
    assert card["data_hash"] == cv["data_hash"] and len(card["data_hash"]) == 64
    assert card["command"].startswith("hep2 train cells --data")
    assert {"commit", "dirty"} <= set(card["code"]) and card["hardware"]["cpu_cores"] >= 1
    assert len(card["cv_mean"]["mca"]["folds"]) == 2 and card["tta"] == 8
    thresholds = card["specimen_thresholds"]  # calibrated on the out-of-fold predictions
    assert 0 < thresholds["oov_min_cell_confidence"] <= 1 and 0 < thresholds["oov_max_entropy"] <= 1
    clf = CellClassifier(weights / "tiny.safetensors")
    assert clf.tta == 8 and clf.config.img_size == 32

    # a later final fit of the same recipe in the same folder keeps the CV in its card; another recipe does not
    common = ("train", "cells", "--data", tiny_i3a, "--out", run, "--protocol", "grouped", "--folds", "2",
              "--model", "resnet10_w32", "--max-steps", "3", "--img-size", "32", "--tta", "8", "--no-progress",
              "--no-cv", "--final-fit")
    _invoke(*common, "--epochs", "2")
    assert json.loads((run / "final" / "model.json").read_text())["cv_mean"] == card["cv_mean"]
    _invoke(*common, "--epochs", "3")
    assert "cv_mean" not in json.loads((run / "final" / "model.json").read_text())

    out = _invoke("evaluate", "cells", "--data", tiny_i3a, "--model", weights / "tiny.safetensors",
                  "--json", tmp_path / "eval.json")
    result = json.loads((tmp_path / "eval.json").read_text())
    assert f"MCA {result['mca']:.4f}" in out and "golgi" in out
    assert result["n_cells"] == 120 and result["throughput"]["model_cells_per_s"] > 0
    assert "warning" in result  # the final model saw these very cells
    assert (tmp_path / "eval.png").is_file()


@pytest.mark.data
@pytest.mark.slow
def test_train_random_split_without_final_fit(tiny_i3a: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    _invoke("train", "cells", "--data", tiny_i3a, "--out", run, "--protocol", "random", "--split", "70/15/15",
            "--model", "resnet10_w32", "--epochs", "1", "--max-steps", "2", "--img-size", "32", "--tta", "1",
            "--no-mask", "--no-final-fit", "--no-progress")
    cv = json.loads((run / "cv.json").read_text())
    assert cv["fold_info"][0]["n_test"] == 18 and cv["fold_info"][0]["n_val"] == 18
    assert not (run / "final").exists()
    result = runner.invoke(app, ["train", "cells", "--data", str(tiny_i3a), "--out", str(run),
                                         "--split", "90/10"])
    assert result.exit_code != 0  # --split needs --protocol random


def test_evaluate_a_manifest_in_object_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               make_i3a_folder) -> None:
    from analysis.models.classifier import ModelConfig, create_model, save_checkpoint
    from hep2.settings import get_settings
    from hep2.storage import storage_from_settings

    monkeypatch.setenv("HEP2_STORAGE_BACKEND", "local")
    monkeypatch.setenv("HEP2_STORAGE_ROOT", str(tmp_path / "bucket"))
    get_settings.cache_clear()
    try:
        folder = make_i3a_folder(tmp_path / "src", n=12)
        storage = storage_from_settings()
        for path in [*sorted(folder.rglob("*.png")), folder / "labels.csv"]:
            storage.put("lab/" + path.relative_to(folder).as_posix(), path.read_bytes())
        cfg = ModelConfig(arch="resnet10_w32", img_size=32)
        weights = save_checkpoint(create_model(cfg), cfg, tmp_path / "random.safetensors")
        _invoke("evaluate", "cells", "--data", "lab/labels.csv", "--from-storage", "--model", weights,
                "--json", tmp_path / "e.json", "--no-png")
    finally:
        get_settings.cache_clear()
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["n_cells"] == 12 and sum(v["support"] for v in result["per_class"].values()) == 12
