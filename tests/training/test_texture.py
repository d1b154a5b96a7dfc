"""Texture model family: descriptors, model files, class weights, specimen metrics, a tiny grouped CV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from analysis.descriptors import DescriptorSpec, crop_to_mask, extract, feature_names
from analysis.texture_model import FORMAT, ModelFileError, TextureModel
from training.datasets import load_manifest
from training.metrics import CLASS_NAMES
from training.specimen_metrics import specimen_metrics
from training.texture import balanced_weights, cross_validate_texture, fit_texture

FULL = DescriptorSpec(coalbp=((1, 2),), gabor_frequencies=(0.25, 0.1), golgi=True)
FAST = {"num_boost_round": 15, "min_data_in_leaf": 2, "num_leaves": 7}


def _disc(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h / 2) / (h * 0.4), (xx - w / 2) / (w * 0.4))
    return yy, xx, r < 1


def smooth(rng: np.random.Generator, h: int = 70, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    _, _, mask = _disc(h, w)
    img = 8 + mask * 30 + rng.normal(0, 1.5, (h, w))
    return img.clip(0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def dotted(rng: np.random.Generator, h: int = 70, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    yy, xx, mask = _disc(h, w)
    img = 8 + mask * 12.0 + rng.normal(0, 1.5, (h, w))
    for y, x in rng.uniform(0.25, 0.75, (30, 2)) * (h, w):
        img += 40 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 2.0)
    return img.clip(0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def ring(rng: np.random.Generator, h: int = 70, w: int = 64) -> tuple[np.ndarray, np.ndarray]:
    _, _, mask = _disc(h, w)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot((yy - h / 2) / (h * 0.4), (xx - w / 2) / (w * 0.4))
    img = 8 + mask * (10 + 40 * np.exp(-((r - 0.9) ** 2) / 0.005)) + rng.normal(0, 1.5, (h, w))
    return img.clip(0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


MAKERS = (smooth, dotted, ring)
LABELS = (0, 3, 4)  # homogeneous, centromere, nuclear_membrane


def crops(n_each: int, seed: int = 0) -> tuple[list, np.ndarray]:
    rng = np.random.default_rng(seed)
    out, y = [], []
    for make, label in zip(MAKERS, LABELS, strict=True):
        for _ in range(n_each):
            out.append(make(rng, int(rng.integers(56, 90)), int(rng.integers(56, 90))))
            y.append(label)
    return out, np.array(y)


def test_descriptor_shape_names_and_finite_values() -> None:
    rng = np.random.default_rng(1)
    cs = [smooth(rng), dotted(rng, 100, 57), ring(rng)]
    rgb = np.repeat(cs[1][0][..., None], 3, axis=-1)
    cs += [(cs[0][0], None), (rgb, cs[1][1]), (np.zeros((60, 60), np.uint8), None)]  # no mask, RGB, flat
    x = extract(cs, FULL)
    names = feature_names(FULL)
    assert x.dtype == np.float32
    assert x.shape == (len(cs), len(names))
    assert len(set(names)) == len(names)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x[4], x[1], rtol=1e-6)  # RGB: the brightest channel
    assert extract([], FULL).shape == (0, len(names))
    assert len(feature_names(DescriptorSpec())) < len(names)


def test_descriptors_rot90_invariant_and_discriminative() -> None:
    rng = np.random.default_rng(2)
    cs = [make(rng, 71, 64) for make in MAKERS]
    rotated = [(np.rot90(img, k), np.rot90(m, k)) for img, m in cs for k in (1, 2)]
    x = extract(cs, FULL)
    xr = extract(rotated, FULL)
    for i in range(len(cs)):
        for j in (0, 1):
            diff = np.abs(xr[2 * i + j] - x[i])
            assert np.all(diff <= 0.02 + 0.03 * np.abs(x[i])), [
                (n, float(x[i][k]), float(xr[2 * i + j][k])) for k, n in enumerate(feature_names(FULL))
                if diff[k] > 0.02 + 0.03 * abs(x[i][k])][:5]
    # ... while different textures differ a lot
    names = feature_names(FULL)
    dots = names.index("dog_1_1.6_dots0.15")
    assert x[1, dots] > 3 * max(x[0, dots], 1.0)
    rim, inner = names.index("radial_mean_0"), names.index("radial_mean_7")
    assert x[2, rim] > 1.5 * x[2, inner] and x[0, rim] < 1.3 * x[0, inner]


def test_spec_round_trip() -> None:
    d = json.loads(json.dumps(FULL.to_dict()))
    assert DescriptorSpec.from_dict(d) == FULL
    with pytest.raises(ValueError, match="unknown"):
        DescriptorSpec.from_dict({**d, "lbp_radius": 3})


def test_balanced_weights_equalise_classes() -> None:
    y = np.array([0] * 50 + [5] * 5 + [2] * 20)
    w = balanced_weights(y)
    totals = [w[y == c].sum() for c in (0, 5, 2)]
    np.testing.assert_allclose(totals, totals[0])
    assert np.isclose(w.sum(), len(y))


@pytest.fixture(scope="module")
def trained() -> tuple[TextureModel, list, np.ndarray]:
    cs, y = crops(12)
    booster = fit_texture(extract(cs, FULL), y, FAST, seed=0)
    return TextureModel(booster, FULL), cs, y


def test_model_learns_and_round_trips(trained, tmp_path: Path) -> None:
    model, _, _ = trained
    test_cs, test_y = crops(4, seed=9)
    p = model.predict_proba(test_cs)
    assert p.shape == (len(test_cs), len(CLASS_NAMES)) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    assert (p.argmax(1) == test_y).mean() >= 0.9
    txt, js = model.save(tmp_path / "m")
    doc = json.loads(js.read_text())
    assert doc["format"] == FORMAT and doc["classes"] == list(CLASS_NAMES)
    assert doc["feature_names"] == feature_names(FULL) and len(doc["booster_sha256"]) == 64
    assert "pickle" not in js.read_text().lower() and txt.read_text().startswith("tree")
    loaded = TextureModel.load(tmp_path / "m.json")
    assert loaded.spec == FULL
    np.testing.assert_array_equal(loaded.predict_proba(test_cs), p)


def test_load_refuses_tampered_or_foreign_files(trained, tmp_path: Path) -> None:
    model, _, _ = trained
    txt, js = model.save(tmp_path / "m")
    text = txt.read_text()
    txt.write_text(text.replace("leaf_value=", "leaf_value=1", 1))
    with pytest.raises(ModelFileError, match="sha256"):
        TextureModel.load(tmp_path / "m")
    txt.write_text(text)
    TextureModel.load(tmp_path / "m")  # intact again
    doc = json.loads(js.read_text())
    js.write_text(json.dumps({**doc, "format": "hep2-texture-model/0"}))
    with pytest.raises(ModelFileError, match="format"):
        TextureModel.load(txt)


def test_class_order_follows_cell_patterns(trained) -> None:
    model, cs, _ = trained
    reordered = tuple(reversed(CLASS_NAMES))
    flipped = TextureModel(model.booster, model.spec, reordered)
    np.testing.assert_allclose(flipped.predict_proba(cs[:3]), model.predict_proba(cs[:3])[:, ::-1], atol=1e-6)


def test_specimen_metrics_hand_made() -> None:
    eye = np.eye(6)
    probs = np.array([eye[0] * 0.9 + 0.02, eye[0] * 0.5 + 0.1,  # group a, homogeneous: right
                      eye[2] * 0.7 + 0.05, eye[1] * 0.4 + 0.1,  # group b, speckled: called nucleolar
                      eye[1] * 0.8 + 0.04])  # group c, speckled: right
    y = np.array([0, 0, 1, 1, 1])
    groups = np.array(["a", "a", "b", "b", "c"])
    m = specimen_metrics(y, probs, groups)
    assert m["n"] == 3 and np.isclose(m["accuracy"], 2 / 3)
    assert np.isclose(m["mca"], (1.0 + 0.5) / 2)
    (w,) = m["wrong"]
    assert (w["group"], w["true"], w["pred"], w["second"]) == ("b", "speckled", "nucleolar", "speckled")
    assert np.isclose(w["p_top"], (0.75 + 0.1) / 2) and np.isclose(w["p_second"], (0.05 + 0.5) / 2)


def test_grouped_cv_writes_experiment_files(make_i3a_folder, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HEP2_TEXTURE_CACHE", str(tmp_path / "cache"))
    table = load_manifest(make_i3a_folder(tmp_path / "data", n=24))
    spec = DescriptorSpec(lbp=((1, 8), (2, 8)), dog_sigmas=(0.0, 1.0, 2.0))
    s = cross_validate_texture(table, spec, FAST, tmp_path / "out", n_splits=2)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1
    with (tmp_path / "out" / "oof.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["cell_id", "group", "fold", "true", "pred", *CLASS_NAMES]
    assert len(rows) == 24 and {r["fold"] for r in rows} == {"0", "1"}
    for r in rows:  # a cell is only ever tested in the fold holding its whole group
        assert {x["fold"] for x in rows if x["group"] == r["group"]} == {r["fold"]}
    cv = json.loads((tmp_path / "out" / "cv.json").read_text())
    assert cv["specimen"]["n"] == 4 and "recall_golgi" in cv["cv_mean"] and cv["n_features"] == s["n_features"]
    with_copies = cross_validate_texture(table, spec, FAST, tmp_path / "aug", n_splits=2, field_copies=1)
    assert len(list((tmp_path / "cache").glob("*-field0.npy"))) == 1  # one cached field-like copy
    assert with_copies["field_copies"] == 1 and [f["n_train"] for f in with_copies["fold_info"]] == [
        f["n_train"] for f in s["fold_info"]]  # cells trained on (their copies are extra rows), tested on originals
    random = cross_validate_texture(table, spec, FAST, tmp_path / "random", n_splits=2, protocol="random")
    with (tmp_path / "random" / "oof.csv").open() as fh:
        folds_of_group: dict[str, set[str]] = {}
        for r in csv.DictReader(fh):
            folds_of_group.setdefault(r["group"], set()).add(r["fold"])
    assert random["protocol"] == "random" and any(len(f) > 1 for f in folds_of_group.values())  # cells, not groups
    with pytest.raises(ValueError, match="protocol"):
        cross_validate_texture(table, spec, FAST, tmp_path / "bad", n_splits=2, protocol="by-slide")


def test_cell_size_normalises_magnification() -> None:
    """The same cell photographed at twice the magnification gives (nearly) the same descriptors once
    sizes are normalised, and clearly different ones at native scale."""
    import cv2

    from analysis.descriptors import normalise_size

    rng = np.random.default_rng(3)
    img, mask = dotted(rng, 64, 64)
    big = (cv2.resize(img, (128, 128), interpolation=cv2.INTER_LINEAR),
           cv2.resize(mask, (128, 128), interpolation=cv2.INTER_NEAREST))
    resized = normalise_size([(img, mask), big], 40.0)
    for image, m in resized:
        assert abs(np.sqrt(m.sum()) - 40.0) < 1.5 and image.shape == m.shape
    native = extract([(img, mask), big], DescriptorSpec())
    scaled = extract([(img, mask), big], DescriptorSpec(cell_size=40.0))

    def gap(x: np.ndarray) -> float:
        return float(np.abs(x[0] - x[1]).sum() / (np.abs(x).sum() / 2))

    assert gap(scaled) < 0.5 * gap(native)


def test_field_copies_are_perturbed_deterministically() -> None:
    from training.texture import perturb_crops

    rng = np.random.default_rng(4)
    originals = [dotted(rng), ring(rng)]
    first, again, other = perturb_crops(originals, 7), perturb_crops(originals, 7), perturb_crops(originals, 8)
    for (a, am), (b, bm) in zip(first, again, strict=True):
        assert np.array_equal(a, b) and np.array_equal(am, bm)
    assert any(a.shape != b.shape or not np.array_equal(a, b) for (a, _), (b, _) in zip(first, other, strict=True))
    for (image, m), (orig, _) in zip(first, originals, strict=True):
        assert image.dtype == np.uint8 and m.dtype == bool and m.shape == image.shape and m.any()
        assert 0.75 * orig.shape[0] <= image.shape[0] <= 1.25 * orig.shape[0]


def test_a_cells_descriptors_do_not_depend_on_the_other_cells_of_the_call() -> None:
    """Tiles are per crop size, so a field's large merged object cannot change a small cell's values."""
    rng = np.random.default_rng(5)
    small, large = dotted(rng, 60, 58), ring(rng, 150, 140)
    alone = extract([small], FULL)
    together = extract([large, small, dotted(rng, 90, 80)], FULL)
    assert np.array_equal(alone[0], together[1])


def test_the_background_around_the_mask_does_not_matter() -> None:
    """Crops are cut to their mask's bounding box first: a wider crop box (other background, another cell's
    pixels outside the mask) gives the same values; a crop without a mask is kept whole."""
    rng = np.random.default_rng(6)
    img, mask = dotted(rng, 60, 58)
    wide_img = rng.integers(0, 255, (97, 83)).astype(np.uint8)
    wide_mask = np.zeros((97, 83), np.uint8)
    wide_img[20:80, 9:67], wide_mask[20:80, 9:67] = img, mask
    assert np.array_equal(extract([(img, mask)], FULL), extract([(wide_img, wide_mask)], FULL))
    cut = crop_to_mask([(wide_img, wide_mask), (img, None), (img, np.zeros_like(mask))])
    assert cut[0][0].shape == cut[0][1].shape == (np.any(mask, 1).sum(), np.any(mask, 0).sum())
    assert cut[1][0] is not None and cut[1][0].shape == img.shape and cut[1][1] is None
    assert cut[2][0].shape == img.shape


def test_descriptor_cache_key_follows_the_code_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    """A change of descriptor values (VALUES_REVISION raised) keys a new cache file: stale values are not reused."""
    from analysis.descriptors import DescriptorSpec
    from training import texture

    spec = DescriptorSpec.from_dict(texture.SHIPPED_DESCRIPTOR)
    before = texture.spec_hash(spec)
    monkeypatch.setattr(texture, "VALUES_REVISION", texture.VALUES_REVISION + 1)
    assert texture.spec_hash(spec) != before


def test_golgi_cues_of_a_cell_without_rim_pixels_are_finite() -> None:
    """A tiny mask has no rim pixel: the rim's octant histogram is then empty (an integer bincount), which
    must still be normalised as floats, not fail."""
    img = (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[20:22, 20:22] = True
    features = extract([(img, mask), smooth(np.random.default_rng(1))], FULL)
    assert features.shape == (2, len(feature_names(FULL))) and np.isfinite(features).all()
