"""Stage 3: measuring, filtering, cropping, mitotic flag and batched classification of cells."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.cells import CellConfig, classify_cells, crop_cell, measure_cells
from hep2.vocabulary import Pattern
from tests.pipeline.helpers_stages import (
    RecordingClassifier,
    agh_crop,
    disk_field,
    make_field,
    synthetic,
    threshold_labels,
)

INTERPHASE = [(60 + 90 * (i // 4), 50 + 90 * (i % 4), 20, 24, 0.30 + 0.01 * i) for i in range(12)]


def test_records_match_the_labels() -> None:
    field = synthetic(Pattern.HOMOGENEOUS, seed=3)
    labels = threshold_labels(field.signal)
    cells = measure_cells(field, labels)
    assert len(cells) == labels.max() > 3
    for c in cells:
        mask = labels == c.label
        y0, x0, y1, x1 = c.bbox
        assert mask[y0:y1, x0:x1].sum() == mask.sum() == c.area
        assert y0 <= c.centroid[0] < y1 and x0 <= c.centroid[1] < x1
        assert c.mean_intensity == pytest.approx(float(field.signal[mask].mean()), rel=1e-5)
        assert c.p90_intensity >= c.mean_intensity * 0.9


def test_border_annotation_and_size_filters() -> None:
    disks = [*INTERPHASE[:8], (150, 2, 20, 20, 0.3), (340, 60, 20, 22, 0.3), (250, 380, 3, 3, 0.3),
             (250, 200, 40, 50, 0.3)]
    field, labels = disk_field(disks, shape=(400, 420))
    annotation = np.zeros(field.shape, bool)
    annotation[310:318, 50:70] = True  # touches the disk at (340, 60)
    cells = {c.label: c for c in measure_cells(make_field(field.signal, annotation), labels)}
    assert cells[9].excluded == "border"
    assert cells[10].excluded == "annotation"
    assert cells[11].excluded == "too_small"
    assert cells[12].excluded == "too_large"
    assert all(cells[i].excluded is None for i in range(1, 9))


def test_fragments_do_not_make_whole_nuclei_clumps() -> None:
    """A punctate field segmented into many dot-sized pieces beside whole nuclei: the typical size is the
    nuclei's (area-weighted), so the nuclei are classified and the pieces are debris."""
    specks = [(330 + 14 * (i // 20), 20 + 14 * (i % 20), 4, 4, 0.3) for i in range(40)]
    field, labels = disk_field([*INTERPHASE[:6], *specks], shape=(400, 420))
    cells = measure_cells(field, labels, CellConfig(min_area_px=10))
    assert [c.excluded for c in cells[:6]] == [None] * 6
    assert all(c.excluded == "too_small" for c in cells[6:])


def test_crop_is_relative_margin_uint8_and_own_mask_only() -> None:
    field, labels = disk_field([(100, 100, 20, 25, 0.4), (100, 150, 20, 20, 0.6)], shape=(200, 260))
    cells = measure_cells(field, labels, CellConfig(min_area_px=10))
    image, mask = crop_cell(field, labels, cells[0])
    y0, x0, y1, x1 = cells[0].bbox
    margin = round(0.2 * max(y1 - y0, x1 - x0))
    assert image.shape == (y1 - y0 + 2 * margin, x1 - x0 + 2 * margin) == mask.shape
    assert image.dtype == np.uint8 and mask.dtype == bool
    assert image.max() == CellConfig().crop_max_level  # brightest pixel (the neighbour) lands on the level
    assert mask.sum() == cells[0].area  # the neighbour inside the crop is not in the mask
    native, _ = crop_cell(field, labels, cells[0], CellConfig(crop_max_level=0))
    assert native.max() == round(0.6 * 255)


def test_mitotic_rule_flags_bright_plates_only() -> None:
    plates = [(330, 60, 7, 18, 0.9), (330, 200, 12, 12, 0.8)]  # edge-on plate, compact chromatin
    dim_small = [(330, 320, 12, 12, 0.2)]  # small but not bright: not mitotic
    field, labels = disk_field([*INTERPHASE, *plates, *dim_small], shape=(380, 400))
    cells = measure_cells(field, labels)
    flagged = {c.label for c in cells if c.mitotic}
    assert flagged == {13, 14}
    field2, labels2 = disk_field(INTERPHASE, shape=(300, 400))
    assert not any(c.mitotic for c in measure_cells(field2, labels2))


def test_classify_is_one_batch_of_kept_cells() -> None:
    field = synthetic(Pattern.SPECKLED, seed=5)
    labels = threshold_labels(field.signal)
    cells = measure_cells(field, labels)
    clf = RecordingClassifier(Pattern.SPECKLED)
    classify_cells(field, labels, cells, clf)
    kept = [c for c in cells if c.excluded is None]
    assert len(clf.calls) == 1 and len(clf.calls[0]) == len(kept) > 0
    assert all(c.pattern == "speckled" and len(c.probabilities) == 6 for c in kept)
    assert all(c.probabilities is None for c in cells if c.excluded)

    class Broken:
        def predict(self, crops):
            return np.zeros((len(crops), 3))

    with pytest.raises(ValueError, match="shape"):
        classify_cells(field, labels, cells, Broken())


def test_real_agh_cells_crop_like_i3a(shared_data) -> None:
    field = agh_crop(shared_data, "ZIA-3.png", (300, 300, 700, 800))
    labels = threshold_labels(field.signal)
    cells = [c for c in measure_cells(field, labels) if c.excluded is None]
    assert len(cells) >= 3
    for c in cells[:10]:
        image, mask = crop_cell(field, labels, c)
        assert image.max() == 52 and mask.any()
        inside, outside = image[mask].mean(), image[~mask].mean()
        assert inside > outside  # the nucleus is brighter than its surround, as in the I3A crops
