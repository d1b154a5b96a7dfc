"""The whole pipeline: analyze_field, the overlay, `hep2 analyze` and `hep2 evaluate fields`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from analysis.analyze import Models, analyze_field
from analysis.cells import measure_cells
from analysis.models import DEFAULT_CELL_MODEL
from analysis.overlay import COLOURS, compose_overlay, encode_png, overlay_of_upload, render_layer
from analysis.segmentation import ClassicalSegmenter
from analysis.types import InvalidImageError
from hep2.synthetic import synthetic_field, synthetic_png
from hep2.vocabulary import Pattern
from tests.pipeline.helpers_stages import RecordingClassifier, disk_field
from training.fields import score

BUNDLED = DEFAULT_CELL_MODEL


@pytest.fixture(autouse=True)
def _decode_stage(request: pytest.FixtureRequest) -> None:
    if request.node.name.startswith(("test_score", "test_overlay")):
        return
    pytest.importorskip("analysis.decode", reason="decode stage (analysis/decode.py) not built yet")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised small classifier (structure like the shipped one; predictions meaningless)."""
    from analysis.models.classifier import ModelConfig, create_model, save_checkpoint

    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    return save_checkpoint(create_model(ModelConfig(arch="resnet10_w32", img_size=32)), ModelConfig(
        arch="resnet10_w32", img_size=32), path)


def test_synthetic_field_end_to_end_with_a_fake_classifier() -> None:
    models = Models(segmenter=ClassicalSegmenter(), classifier=RecordingClassifier(Pattern.NUCLEOLAR, 0.95))
    data = synthetic_png(Pattern.NUCLEOLAR, seed=4, size=(384, 512), cells=20)
    result = analyze_field(data, models, sidecar={"exposure_ms": 100})
    assert result.intensity.intensity_class == "positive" and result.intensity.exposure_ms == 100
    assert result.specimen.pattern == "nucleolar" and result.specimen.icap == "AC-8,9,10"
    assert result.specimen.cells_used >= 10 and not result.specimen.needs_review
    assert set(result.timings_ms) == {"decode", "quality", "segment", "cells", "intensity", "classify", "specimen",
                                      "overlay", "versions"}  # every step of the work is inside one of them
    layer = Image.open(io.BytesIO(result.overlay_layer))  # the worker's part of the overlay: a palette PNG
    assert layer.size == (512, 384) and layer.mode == "P"
    overlay = Image.open(io.BytesIO(overlay_of_upload(data, result.overlay_layer)))
    assert overlay.size == (512, 384) and overlay.mode == "RGB"
    blob = json.dumps(result.to_dict())
    assert '"pattern": "nucleolar"' in blob and "overlay_layer" not in blob


def test_negative_well_is_negative_without_classifying() -> None:
    """Unstained nuclei, faintly visible (as in real negative wells): negative, no classifier call."""
    clf = RecordingClassifier()
    result = analyze_field(synthetic_png(Pattern.HOMOGENEOUS, brightness=0.0, size=(384, 384), cells=20,
                                         noise_scale=0.3), Models(segmenter=ClassicalSegmenter(), classifier=clf))
    assert result.specimen.pattern == "negative" and result.specimen.icap == "AC-0"
    assert clf.calls == []


def test_noise_only_well_is_rejected_not_negative() -> None:
    """A field of camera noise (no nuclei at all: empty well, failed scan) is rejected by the quality gate."""
    with pytest.raises(InvalidImageError, match="noise"):
        analyze_field(synthetic_png(Pattern.HOMOGENEOUS, brightness=0.0, residual=0.0, size=(256, 256)),
                      Models(segmenter=ClassicalSegmenter(), classifier=RecordingClassifier()))


@pytest.mark.parametrize("data", [b"", b"not an image at all", synthetic_png(Pattern.SPECKLED)[:300]])
def test_bad_input_raises_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        analyze_field(data, Models(segmenter=ClassicalSegmenter(), classifier=RecordingClassifier()))


def test_overlay_colours_outlines_by_class() -> None:
    field, labels = disk_field([(60, 60, 20, 20, 0.5), (60, 160, 20, 20, 0.5), (150, 100, 20, 20, 0.5)],
                               shape=(220, 300))
    cells = measure_cells(field, labels)
    for c, pattern in zip(cells, ("speckled", "golgi", "speckled"), strict=True):
        c.pattern, c.probabilities = pattern, [0.0] * 6
    rgb = np.asarray(Image.open(io.BytesIO(compose_overlay(field, render_layer(field, labels, cells)))).convert("RGB"))
    edge = rgb[60, 40]  # the left edge of the first disk
    assert tuple(edge) == COLOURS["speckled"]
    assert tuple(rgb[60, 140]) == COLOURS["golgi"]


def test_overlay_png_is_lossless() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8)
    rgb[:, :20] = rgb[:, :20].max(axis=2, keepdims=True)  # grey part, as in an overlay
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(rgb)))), rgb)


def test_real_field_with_bundled_models(shared_data: Path) -> None:
    if not BUNDLED.is_file():
        pytest.skip(f"bundled cell classifier {BUNDLED} is absent (train and export it first)")
    models = Models(segmenter=ClassicalSegmenter(), classifier_weights=BUNDLED, device="cpu")
    result = analyze_field((shared_data / "agh-fields" / "HOM-3.png").read_bytes(), models)
    assert result.intensity.intensity_class != "negative"
    assert result.specimen.cells_used > 5 and result.image["width"] == 1296
    assert len(result.model_versions["classifier"]["sha256"]) == 64
    assert any(c.probabilities is not None for c in result.cells)


def test_analyze_cli_lists_bad_files_and_writes_json(tmp_path: Path, tiny_weights: Path) -> None:
    from cli.main import app

    good, bad = tmp_path / "well.png", tmp_path / "broken.png"
    good.write_bytes(synthetic_png(Pattern.SPECKLED, seed=1, size=(256, 320), cells=12))
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = tmp_path / "out.json"
    res = CliRunner().invoke(app, ["analyze", str(good), str(bad), "--json", str(out), "--overlay-dir",
                                   str(tmp_path / "ov"), "--classifier", str(tiny_weights),
                                   "--segmenter", "classical", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "REJECTED" in res.output and "broken.png" in res.output and "well.png" in res.output
    data = json.loads(out.read_text())
    assert "error" in data[str(bad)] and data[str(good)]["intensity"]["intensity_class"] == "positive"
    assert Image.open(tmp_path / "ov" / "well.overlay.png").size == (320, 256)
    assert data[str(good)]["timings_ms"]["overlay_render"] > 0  # the CLI's full overlay is timed too


def test_analyze_cli_rejects_16_bit_unless_accepted(tmp_path: Path, tiny_weights: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import app
    from hep2.settings import get_settings

    green = synthetic_field(Pattern.SPECKLED, seed=1, size=(256, 320), cells=12)[..., 1]
    path = tmp_path / "well16.png"
    Image.fromarray(green.astype(np.uint16) * 257).save(path)
    args = ["analyze", str(path), "--classifier", str(tiny_weights), "--segmenter", "classical", "--device", "cpu"]
    rejected = CliRunner().invoke(app, args)
    assert rejected.exit_code == 0 and "REJECTED: 16-bit image (PNG, 16 bits per sample)" in rejected.output
    accepted = CliRunner().invoke(app, [*args, "--accept-16bit"])
    assert accepted.exit_code == 0 and "REJECTED" not in accepted.output and "well16.png  " in accepted.output
    monkeypatch.setenv("HEP2_ACCEPT_16BIT", "true")
    get_settings.cache_clear()
    try:
        assert "REJECTED" not in CliRunner().invoke(app, args).output  # the setting is the default
        assert "REJECTED: 16-bit" in CliRunner().invoke(app, [*args, "--reject-16bit"]).output
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_evaluate_fields_cli_on_a_synthetic_set(tmp_path: Path, tiny_weights: Path) -> None:
    from cli.main import app

    rows = [("HOM-1.png", "HOM", "homogeneous", "AC-1", 1, 150.0), ("NEG-1.png", "NEG", "negative", "AC-0", 0, 0.0),
            ("AMA-1.png", "AMA", "mitochondrial", "AC-21", 1, 120.0)]
    with (tmp_path / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "code", "pattern", "icap", "ana_positive", "width", "height"])
        for name, code, pattern, icap, pos, bright in rows:
            (tmp_path / name).write_bytes(synthetic_png(Pattern.HOMOGENEOUS, brightness=bright, size=(384, 384),
                                                        cells=20, noise_scale=1.0 if bright else 0.3))
            w.writerow([name, code, pattern, icap, pos, 384, 384])
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(app, ["evaluate", "fields", "--data", str(tmp_path), "--json", str(out),
                                   "--classifier", str(tiny_weights), "--segmenter", "classical",
                                   "--device", "cpu", "--overlay-dir", str(tmp_path / "ov")])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["posneg"]["n"] == 3 and result["posneg"]["accuracy"] == 1.0
    assert result["in_vocab_pattern"]["n"] == 1 and result["out_of_vocab"]["n"] == 1
    assert [e["kind"] for e in result["images"]] == ["in_vocab", "negative", "oov"]
    written = sorted(p.name for p in (tmp_path / "ov").iterdir())
    assert written == [f"{n}.overlay.png" for n in ("AMA-1", "HOM-1", "NEG-1")]
    assert all(e["timings_ms"]["overlay_render"] > 0 for e in result["images"])


def test_score_counts() -> None:
    base = {"needs_review": False, "pattern": "homogeneous", "best_known_pattern": "homogeneous"}
    entries = [{**base, "image": "a", "kind": "in_vocab", "expected": "homogeneous", "intensity_class": "positive"},
               {**base, "image": "b", "kind": "in_vocab", "expected": "speckled", "intensity_class": "negative"},
               {**base, "image": "c", "kind": "negative", "expected": "negative", "intensity_class": "negative"},
               {**base, "image": "d", "kind": "oov", "expected": None, "intensity_class": "positive"},
               {**base, "image": "e", "kind": "oov", "expected": None, "intensity_class": "intermediate",
                "needs_review": True, "pattern": "other"},
               {"image": "f", "kind": "oov", "error": "bad"}]
    s = score(entries)
    assert s["errors"] == ["f"]
    assert s["posneg"] == {"n": 5, "accuracy": 0.8, "positives_called_negative": 1, "negatives_called_positive": 0}
    assert s["in_vocab_pattern"]["accuracy"] == 0.5 and s["in_vocab_pattern"]["best_known_accuracy"] == 0.5
    assert s["out_of_vocab"]["flagged_for_review"] == 0.5 and s["out_of_vocab"]["confident_known_class"] == 1


def test_expected_call_maps_codes() -> None:
    from training.fields import expected_call

    assert expected_call("ZIA", "speckled", 1) == ("in_vocab", "speckled")
    assert expected_call("ACA", "centromere", 1) == ("in_vocab", "centromere")
    assert expected_call("NEG", "negative", 0) == ("negative", "negative")
    assert expected_call("DOT", "nuclear dots", 1) == ("oov", None)
    assert expected_call("XYZ", "Golgi", 1) == ("in_vocab", "golgi")  # other data sets: by the pattern column
    assert expected_call("XYZ", "rods and rings", 1) == ("oov", None)


def test_model_versions_hash_the_weights(tiny_weights: Path) -> None:
    import hashlib

    from analysis.models.inference import CellClassifier

    single = Models(segmenter=ClassicalSegmenter(), classifier=CellClassifier(tiny_weights, device="cpu"))
    info = single.versions()
    assert info["segmenter"]["name"] == "classical"
    assert info["segmenter"]["params"]["dot_radius"] == ClassicalSegmenter().dot_radius
    assert info["classifier"]["sha256"] == hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    pair = Models(segmenter=ClassicalSegmenter(),
                  classifier=CellClassifier([tiny_weights, tiny_weights], device="cpu")).versions()["classifier"]
    assert len(pair["members"]) == 2 and pair["sha256"] != info["classifier"]["sha256"]
