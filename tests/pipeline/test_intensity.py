"""Stage 4: the fluorescence index and its class."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from analysis.cells import background_level, measure_cells
from analysis.intensity import IntensityConfig, classify_index, exposure_from, measure_intensity
from hep2.vocabulary import Pattern
from tests.pipeline.helpers_stages import agh_crop, make_field, synthetic, threshold_labels


def _index(field, labels, **kw):
    return measure_intensity(field, labels, measure_cells(field, labels), **kw)


def test_bright_stain_positive_and_blank_negative_on_the_same_cells() -> None:
    bright = synthetic(Pattern.HOMOGENEOUS, brightness=150.0, seed=1)
    blank = synthetic(Pattern.HOMOGENEOUS, brightness=0.0, seed=1)
    labels = threshold_labels(bright.signal)  # the same nuclei, stained or not
    pos, neg = _index(bright, labels), _index(blank, labels)
    assert pos.basis == "cells" and pos.cells_used >= 5
    assert pos.intensity_class == "positive" and neg.intensity_class == "negative"
    assert pos.index > 10 * max(neg.index, 1.0) and pos.snr > neg.snr


def test_a_given_background_is_the_computed_one() -> None:
    field = synthetic(Pattern.SPECKLED, brightness=120.0, seed=4)
    labels = threshold_labels(field.signal)
    background = background_level(field, labels)
    cells = measure_cells(field, labels, background=background[0])
    assert cells == measure_cells(field, labels)
    assert measure_intensity(field, labels, cells, background=background) == measure_intensity(field, labels, cells)


def test_exposure_normalises_the_index() -> None:
    field = synthetic(Pattern.SPECKLED, seed=2)
    labels = threshold_labels(field.signal)
    raw = _index(field, labels)
    longer = _index(field, labels, sidecar={"exposure_ms": 200.0})
    assert raw.exposure_ms is None and longer.exposure_ms == 200.0
    assert longer.index == pytest.approx(raw.index * 100.0 / 200.0, rel=1e-3)
    assert exposure_from({"exposure_ms": "fast"}) is None and exposure_from({"exposure": 50}) == 50.0


def test_cut_offs_are_configurable() -> None:
    cfg = IntensityConfig(negative_below=5, positive_from=50)
    assert [classify_index(v, cfg) for v in (4.9, 5.0, 49.9, 50.0)] == [
        "negative", "intermediate", "intermediate", "positive"]
    with pytest.raises(ValidationError):
        IntensityConfig(negative_below=30, positive_from=10)


def test_no_cells_falls_back_to_the_field() -> None:
    rng = np.random.default_rng(0)
    field = make_field(0.03 + 0.005 * rng.standard_normal((200, 200)))
    result = measure_intensity(field, np.zeros((200, 200), np.int32), [])
    assert result.basis == "field_p99" and result.cells_used == 0
    assert result.intensity_class == "negative"


def test_real_negative_well_reads_far_below_a_positive_one(shared_data) -> None:
    box = (300, 300, 700, 900)
    results = {}
    for name in ("NEG-1.png", "HOM-3.png", "ACA-2.png"):
        field = agh_crop(shared_data, name, box)
        results[name] = _index(field, threshold_labels(field.signal))
    assert results["NEG-1.png"].index < results["HOM-3.png"].index / 4
    assert results["NEG-1.png"].index < results["ACA-2.png"].index / 2
