"""Stage 5: specimen aggregation, mixed patterns, review and out-of-vocabulary rules; config loading."""

from __future__ import annotations

import numpy as np

from analysis.build import default_segmenter
from analysis.cells import Cell, background_level, measure_cells
from analysis.config import CONFIG_ENV, load_config
from analysis.models.unet import unet_promoted
from analysis.segmentation import ClassicalSegmenter
from analysis.specimen import (
    SpecimenConfig,
    aggregate,
    calibrate_nuclear_max,
    calibrate_oov,
    crop_cytoplasm_ratio,
    cytoplasm_ratio,
)
from cli.analysis import cli_models
from hep2.vocabulary import CELL_PATTERNS, Pattern
from tests.pipeline.helpers_stages import agh_crop, disk_field, one_hot_probs, threshold_labels


def _cells(probs: np.ndarray, mitotic: int = 0) -> list[Cell]:
    out = []
    for i, p in enumerate(probs, start=1):
        c = Cell(label=i, bbox=(0, 0, 10, 10), centroid=(5.0, 5.0), area=80, mean_intensity=0.3,
                 median_intensity=0.3, p90_intensity=0.4, elongation=1.2, mitotic=i <= mitotic)
        c.probabilities = [float(v) for v in p]
        c.pattern = CELL_PATTERNS[int(np.argmax(p))].value
        out.append(c)
    return out


def test_confident_cells_give_the_pattern_and_icap() -> None:
    res = aggregate(_cells(one_hot_probs(30, Pattern.CENTROMERE, 0.92)), "positive", 0.1)
    assert (res.pattern, res.icap, res.needs_review, res.second_pattern) == ("centromere", "AC-3", False, None)
    assert res.confidence > 0.9 and res.cells_used == 30


def test_mitotic_cells_do_not_vote() -> None:
    probs = np.vstack([one_hot_probs(10, Pattern.HOMOGENEOUS), one_hot_probs(20, Pattern.SPECKLED)])
    res = aggregate(_cells(probs, mitotic=10), "positive")
    assert res.pattern == "speckled" and res.cells_used == 20 and res.second_pattern is None


def test_mixed_pattern_reports_a_second_pattern() -> None:
    probs = np.vstack([one_hot_probs(18, Pattern.HOMOGENEOUS, 0.95), one_hot_probs(12, Pattern.NUCLEOLAR, 0.95)])
    res = aggregate(_cells(probs), "positive")
    assert res.pattern == "homogeneous" and res.second_pattern == "nucleolar"
    assert 0.25 < res.second_confidence < res.confidence


def test_uncertain_cells_are_out_of_vocabulary() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6) * 2.0, size=40)
    res = aggregate(_cells(probs), "positive")
    assert res.pattern == "other" and res.icap is None and res.needs_review
    assert any("vocabulary" in r for r in res.reasons)
    assert res.best_known_pattern in {p.value for p in CELL_PATTERNS}


def test_cytoplasmic_staining_is_out_of_vocabulary_unless_golgi() -> None:
    probs = one_hot_probs(30, Pattern.NUCLEOLAR, 0.92)
    assert aggregate(_cells(probs), "positive", cyto_ratio=0.9).pattern == "other"
    assert aggregate(_cells(one_hot_probs(30, Pattern.GOLGI, 0.92)), "positive", cyto_ratio=0.9).pattern == "golgi"


def test_few_cells_and_negative() -> None:
    few = aggregate(_cells(one_hot_probs(4, Pattern.SPECKLED)), "positive")
    assert few.pattern == "speckled" and few.needs_review and "too few" in few.reasons[0]
    neg = aggregate(_cells(one_hot_probs(30, Pattern.SPECKLED)), "negative")
    assert (neg.pattern, neg.icap, neg.needs_review) == ("negative", "AC-0", False)
    none = aggregate([], "positive")
    assert none.pattern == "other" and none.needs_review


def _ringed(cyto: float) -> tuple:
    disks = [(60 + 100 * (i // 4), 60 + 100 * (i % 4), 22, 22, cyto) for i in range(8)]
    disks += [(60 + 100 * (i // 4), 60 + 100 * (i % 4), 14, 14, 0.5) for i in range(8)]
    field, labels = disk_field(disks, shape=(240, 420))
    labels = np.where(labels > 8, labels - 8, 0).astype(np.int32)  # only the inner disks are nuclei
    cells = measure_cells(field, labels)
    for c in cells:
        c.probabilities = list(one_hot_probs(1, Pattern.HOMOGENEOUS)[0])
    return field, labels, cells


def test_cytoplasm_ratio_measures_signal_around_nuclei() -> None:
    for cyto, low, high in ((0.45, 0.7, 1.0), (0.03, -0.05, 0.05)):
        field, labels, cells = _ringed(cyto)
        ratio = cytoplasm_ratio(field, labels, cells, background_level(field, labels)[0])
        assert low <= ratio <= high


def test_cytoplasm_ratio_on_real_fields(shared_data) -> None:
    ratios = {}
    for name in ("AMA-1.png", "ZIA-3.png"):
        field = agh_crop(shared_data, name, (300, 300, 700, 900))
        labels = threshold_labels(field.signal)
        cells = measure_cells(field, labels)
        for c in cells:
            c.probabilities = list(one_hot_probs(1, Pattern.SPECKLED)[0])
        ratios[name] = cytoplasm_ratio(field, labels, cells, background_level(field, labels)[0])
    assert ratios["ZIA-3.png"] is not None and ratios["AMA-1.png"] is not None
    assert ratios["AMA-1.png"] > ratios["ZIA-3.png"]


def test_config_files_and_env(tmp_path, monkeypatch) -> None:
    toml = tmp_path / "lab.toml"
    toml.write_text("[segmentation]\ndot_radius = 1\n[intensity]\nnegative_below = 7.5\npositive_from = 40\n"
                    "[specimen]\nmin_cells = 3\n")
    cfg = load_config(toml)
    assert cfg.intensity.negative_below == 7.5 and cfg.specimen.min_cells == 3
    assert cfg.segmentation == ClassicalSegmenter(dot_radius=1)
    assert default_segmenter(kind="classical", classical=cfg.segmentation) is cfg.segmentation
    assert unet_promoted() or cli_models(None, "default", "cpu", cfg).segmenter is cfg.segmentation
    assert cfg.cells.crop_max_level == 52  # untouched sections keep their defaults
    js = tmp_path / "lab.json"
    js.write_text('{"specimen": {"oov_cytoplasm_ratio": 0.9}}')
    monkeypatch.setenv(CONFIG_ENV, str(js))
    assert load_config().specimen.oov_cytoplasm_ratio == 0.9
    monkeypatch.delenv(CONFIG_ENV)
    assert load_config().specimen == SpecimenConfig()


def test_calibrate_oov_passes_every_reference_specimen() -> None:
    rng = np.random.default_rng(1)
    sharp = rng.dirichlet(np.ones(6) * 0.2, size=50)  # confident group
    vague = rng.dirichlet(np.ones(6) * 1.5, size=50)  # unsure but in-vocabulary group
    probs, groups = np.vstack([sharp, vague]), np.array(["a"] * 50 + ["b"] * 50)
    cfg = SpecimenConfig(**calibrate_oov(probs, groups))
    assert cfg.oov_min_cell_confidence <= vague.max(axis=1).mean() <= sharp.max(axis=1).mean()
    for members in (sharp, vague):
        assert not any("vocabulary" in r for r in aggregate(_cells(members), "positive", config=cfg).reasons)


def _crop(cyto: float, dots: bool = False) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:80, :80]
    r = np.hypot(yy - 40, xx - 40)
    image = np.where(r < 30, 0.9 * cyto, 0.05) + np.where(r < 20, 0.6, 0.0)
    if dots:  # punctate nucleus: dark nucleoplasm, a few bright spots
        image = np.where(r < 20, 0.1, image)
        image[(r < 20) & (yy % 4 < 2) & (xx % 4 < 2)] = 0.9
    return image, r < 20


def test_crop_cytoplasm_ratio_uses_the_bright_part_of_punctate_nuclei() -> None:
    plain = crop_cytoplasm_ratio(*_crop(0.0))
    ringed = crop_cytoplasm_ratio(*_crop(0.6))
    punctate = crop_cytoplasm_ratio(*_crop(0.2, dots=True))
    assert plain is not None and ringed is not None and punctate is not None
    assert plain < 0.05 < punctate < 0.3 < ringed
    assert crop_cytoplasm_ratio(np.zeros((8, 8)), np.ones((8, 8), bool)) is None  # no background to measure


def test_calibrate_cytoplasm_passes_every_nuclear_group_and_ignores_golgi() -> None:
    ratios = np.array([0.1, 0.2, 0.3, 0.42, 0.44, 1.5, 1.4])
    groups = np.array(["a", "a", "b", "c", "c", "g", "g"])
    patterns = np.array(["speckled", "speckled", "nucleolar", "nuclear_membrane", "nuclear_membrane",
                         "golgi", "golgi"])
    assert calibrate_nuclear_max(ratios, groups, patterns) == 0.45
