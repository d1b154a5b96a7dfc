"""find_annotations (OpenCV line opening, runs without labelling, no transposed copy) gives exactly the mask
of the implementation it replaced (the reference below, as in 3cce0d9)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from analysis.decode import decode_image, find_annotations


def ref_find_annotations(signal: np.ndarray, min_length: int | None = None, step: float = 6 / 255,
                         tolerance: float = 1.5 / 255) -> np.ndarray:
    h, w = signal.shape
    length = (min_length or max(40, round(0.04 * max(h, w)))) | 1
    mask = np.zeros((h, w), bool)
    for transpose in (False, True):
        g = np.ascontiguousarray(signal.T) if transpose else signal
        flat = np.zeros(g.shape, bool)
        flat[:, :-1] = np.abs(np.diff(g, axis=1)) <= tolerance
        flat[:, 1:] |= flat[:, :-1]
        jump = np.abs(np.diff(g, axis=0)) >= step
        edge = np.zeros(g.shape, bool)
        edge[:-1] |= jump
        edge[1:] |= jump
        candidate = flat & edge
        opened = ndimage.maximum_filter1d(ndimage.minimum_filter1d(candidate.view(np.uint8), length, axis=1),
                                          length, axis=1)
        long_runs = opened.astype(bool) & candidate
        runs, n = ndimage.label(long_runs, structure=[[0, 0, 0], [1, 1, 1], [0, 0, 0]])
        box = np.zeros(g.shape, bool)
        for ys, xs in ndimage.find_objects(runs) if n else []:
            pad = max(8, round(0.15 * (xs.stop - xs.start)))
            box[max(ys.start - pad, 0):ys.stop + pad, max(xs.start - 4, 0):xs.stop + 4] = True
        mask |= box.T if transpose else box
    return mask


def _drawn(seed: int, shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = (rng.normal(0.1, 0.03, shape)).clip(0, 1)
    img = Image.fromarray((base * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        y, x = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
        ln = int(rng.integers(30, 260))
        if rng.random() < 0.5:
            draw.rectangle((x, y, x + ln, y + int(rng.integers(0, 4))), fill=int(rng.integers(120, 256)))
        else:
            draw.rectangle((x, y, x + int(rng.integers(0, 4)), y + ln), fill=int(rng.integers(120, 256)))
        draw.text((x, max(y - 14, 0)), "20 um", fill=255)
    return (np.asarray(img).astype(np.float32) / 255).astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_find_annotations_equals_reference(seed: int) -> None:
    shape = [(384, 512), (300, 300), (97, 1001), (1001, 97), (60, 41), (512, 384)][seed]
    signal = _drawn(seed, shape)
    assert np.array_equal(find_annotations(signal), ref_find_annotations(signal))
    assert np.array_equal(find_annotations(signal, min_length=41), ref_find_annotations(signal, min_length=41))
    flat = np.full(shape, 0.5, np.float32)  # one flat image: every row is a run, no edges
    flat[shape[0] // 2:] = 0.9
    assert np.array_equal(find_annotations(flat), ref_find_annotations(flat))
    edge_touch = signal.copy()
    edge_touch[0, :] = 1.0  # runs touching the border, along both axes
    edge_touch[:, -1] = 1.0
    assert np.array_equal(find_annotations(edge_touch), ref_find_annotations(edge_touch))


@pytest.mark.data
def test_find_annotations_equals_reference_on_agh(shared_data) -> None:
    for path in sorted((shared_data / "agh-fields").glob("*.png"))[:6]:
        signal = decode_image(path.read_bytes()).signal
        assert np.array_equal(find_annotations(signal), ref_find_annotations(signal)), path.name
