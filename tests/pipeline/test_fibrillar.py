"""The fibrillar (line texture) review cue: the measure, the specimen rule and its calibration command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from analysis.fibrillar import fibrillar_index
from analysis.specimen import SpecimenConfig, aggregate
from hep2.vocabulary import Pattern
from tests.pipeline.helpers_stages import one_hot_probs
from tests.pipeline.test_specimen import _cells

YY, XX = np.mgrid[:120, :120]
CELL = np.hypot(YY - 60, XX - 60) < 50


def fibres(seed: int = 0) -> np.ndarray:
    """A cell crossed by 12 thin straight fibres (cytoskeleton-like)."""
    rng = np.random.default_rng(seed)
    image = np.full(YY.shape, 0.05)
    for _ in range(12):
        angle, offset = rng.uniform(0, np.pi), rng.uniform(-40, 40)
        distance = np.abs((XX - 60) * np.sin(angle) - (YY - 60) * np.cos(angle) - offset)
        image += 0.6 * np.exp(-(distance ** 2) / 2.0)
    return ndimage.gaussian_filter(image, 0.5) + rng.normal(0, 0.01, YY.shape)


def dots(seed: int = 0) -> np.ndarray:
    """A nucleus with 40 round 2-px spots (centromere-like)."""
    rng = np.random.default_rng(seed)
    image = np.where(CELL, 0.15, 0.05)
    for y, x in rng.uniform(20, 100, size=(40, 2)):
        image += 0.6 * np.exp(-((YY - y) ** 2 + (XX - x) ** 2) / 4.0)
    return image + rng.normal(0, 0.01, YY.shape)


def rim() -> np.ndarray:
    """A nuclear-membrane nucleus: a bright rim, a dim smooth inside."""
    r = np.hypot(YY - 60, XX - 60)
    return 0.05 + 0.2 * CELL + 0.6 * np.exp(-((r - 47) ** 2) / 8.0)


def test_fibres_score_higher_than_dots_and_rims() -> None:
    lines, spots, ring = fibrillar_index(fibres(), CELL), fibrillar_index(dots(), CELL), fibrillar_index(rim(), CELL)
    assert lines is not None and spots is not None
    assert lines > 0.85 > spots
    assert ring is None or ring < 0.85  # the rim lies outside the central region
    assert fibrillar_index(np.zeros((5, 5)), np.ones((5, 5), bool)) is None


def test_fibrillar_texture_sends_the_call_to_review_and_keeps_it() -> None:
    cells = _cells(one_hot_probs(30, Pattern.SPECKLED, 0.9))
    plain = aggregate(cells, "positive", 0.1, fibrillar=0.80)
    assert not plain.needs_review and plain.fibrillar_index == 0.8
    flagged = aggregate(cells, "positive", 0.1, fibrillar=0.88)
    assert flagged.needs_review and flagged.pattern == "speckled"
    assert any("fibrillar" in r for r in flagged.reasons)
    lab_setting = SpecimenConfig(review_fibrillar_index=0.9)
    assert not aggregate(cells, "positive", 0.1, lab_setting, fibrillar=0.88).needs_review


def test_calibration_command_writes_both_thresholds(tmp_path: Path) -> None:
    from cli.main import app

    rows, kinds = [], [("Speckled", dots)] * 4 + [("Centromere", dots)] * 4 + [("Golgi", fibres)] * 4
    for i, (pattern, make) in enumerate(kinds):
        (tmp_path / "images").mkdir(exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        image = np.clip(make(i) * 255, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray((CELL * 255).astype(np.uint8)).save(tmp_path / "masks" / f"{i}.png")
        rows.append({"cell_id": i, "pattern": pattern, "specimen_group": f"{pattern}-{i % 2}",
                     "image": f"images/{i}.png", "mask": f"masks/{i}.png", "width": 120, "height": 120})
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "calibration.json"
    result = CliRunner().invoke(app, ["evaluate", "cytoplasm", "--data", str(tmp_path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    fib = data["review_fibrillar_index"]
    assert fib["cells_measured"] == 12 and set(fib["per_pattern"]) == {"speckled", "centromere", "golgi"}
    nuclear_max = max(fib["per_pattern"][p]["max"] for p in ("speckled", "centromere"))
    assert nuclear_max <= fib["threshold"] < nuclear_max + 0.05 + 1e-9  # Golgi (fibres here) is ignored
    assert fib["threshold"] < fib["per_pattern"]["golgi"]["min"]
    assert "oov_cytoplasm_ratio" in data and "review_fibrillar_index" in result.output
