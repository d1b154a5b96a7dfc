"""The overlay layer: compose(field, layer) equals the renderer that drew everything at once, pixel for pixel."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from analysis.cells import Cell, measure_cells
from analysis.decode import decode_upload
from analysis.overlay import LAYER_PALETTE, compose_overlay, overlay_of_upload, read_layer, render_layer
from analysis.segmentation import ClassicalSegmenter
from analysis.types import FieldImage
from hep2.synthetic import synthetic_png
from hep2.vocabulary import CELL_PATTERNS, Pattern
from tests.pipeline.overlay_reference import render_overlay

FIELDS = ("ACA-2", "HOM-3", "NEG-1")  # many small nuclei, mitoses, a negative well


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _cells_of_every_kind(field: FieldImage, labels: np.ndarray) -> list[Cell]:
    """Measured cells with every outline colour: each pattern, unclassified, excluded, mitotic (with an "M"),
    and a segment without a cell record (drawn black)."""
    cells = measure_cells(field, labels)
    for i, c in enumerate(cells):
        if c.excluded is None and not c.mitotic and i % 7:
            c.pattern = CELL_PATTERNS[i % len(CELL_PATTERNS)].value
    for c in cells[:3]:
        c.mitotic = True
    return cells[:-1]  # the last segment has no Cell: the black outline


def _same(field: FieldImage, labels: np.ndarray, cells: list[Cell], **legend: object) -> tuple[int, int]:
    """(max difference, number of differing pixels) between the reference and compose(field, layer)."""
    want = _pixels(render_overlay(field, labels, cells, **legend))  # type: ignore[arg-type]
    got = _pixels(compose_overlay(field, render_layer(field, labels, cells, **legend)))  # type: ignore[arg-type]
    assert want.shape == got.shape
    diff = np.abs(want - got).max(axis=2)
    return int(diff.max()), int((diff > 0).sum())


@pytest.mark.parametrize("name", FIELDS)
def test_composed_overlay_equals_the_reference_on_agh_fields(shared_data: Path, name: str) -> None:
    data = (shared_data / "agh-fields" / f"{name}.png").read_bytes()
    field = decode_upload(data)
    labels = np.asarray(ClassicalSegmenter().segment(field)).astype(np.int32)
    cells = _cells_of_every_kind(field, labels)
    assert _same(field, labels, cells, title=f"{name}.png", index=12.3, intensity_class="positive") == (0, 0)
    layer = render_layer(field, labels, cells, title=f"{name}.png", index=12.3, intensity_class="positive")
    assert len(layer) < 60_000 < 600_000 < len(render_overlay(field, labels, cells))  # ~30 KB vs ~1 MB
    assert overlay_of_upload(data, layer) == compose_overlay(field, layer)  # the service's path: the same bytes


def test_composed_overlay_equals_the_reference_when_downscaled() -> None:
    """A field longer than ``max_side``: outlines are drawn before the resize, labels and legend after it."""
    field = decode_upload(synthetic_png(Pattern.SPECKLED, seed=3, size=(1200, 1700), cells=40))
    labels = np.asarray(ClassicalSegmenter().segment(field)).astype(np.int32)
    cells = _cells_of_every_kind(field, labels)
    assert len(cells) > 10
    assert _same(field, labels, cells, title="big", index=None) == (0, 0)
    assert Image.open(io.BytesIO(compose_overlay(field, render_layer(field, labels, cells)))).size == (1600, 1129)


def test_layer_is_a_palette_png_with_the_field_transparent() -> None:
    field = decode_upload(synthetic_png(Pattern.HOMOGENEOUS, seed=1, size=(200, 260), cells=8))
    labels = np.asarray(ClassicalSegmenter().segment(field)).astype(np.int32)
    layer = render_layer(field, labels, measure_cells(field, labels), title="t")
    image = Image.open(io.BytesIO(layer))
    assert image.mode == "P" and image.size == (260, 200) and image.info["transparency"] == 0
    index, palette, legend = read_layer(layer)
    assert [tuple(p) for p in palette[:len(LAYER_PALETTE)]] == LAYER_PALETTE
    assert (index > 0).any() and (index[labels == 0] == 0).all() and legend["title"] == "t"


def test_layer_of_another_field_is_refused() -> None:
    small = decode_upload(synthetic_png(Pattern.HOMOGENEOUS, seed=1, size=(200, 260), cells=8))
    other = decode_upload(synthetic_png(Pattern.HOMOGENEOUS, seed=1, size=(210, 260), cells=8))
    layer = render_layer(small, np.zeros(small.shape, np.int32), [])
    with pytest.raises(ValueError, match="not this field's layer"):
        compose_overlay(other, layer)
    with pytest.raises(ValueError, match="not an overlay layer"):
        compose_overlay(small, synthetic_png(Pattern.HOMOGENEOUS, seed=1, size=(200, 260)))
