"""The vectorised and compiled segmentation helpers give exactly what the simple per-object implementations
they replaced (kept here as references, as they were in 9c6d4c0) give, on small synthetic inputs; the OpenCV equivalents
of scipy functions give scipy's values; batched TTA equals one forward pass per view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from analysis.preprocess import dihedral
from analysis.segmentation import (
    binary_opening_cross,
    dilate_cross,
    disk,
    distance_transform,
    fill_holes,
    gaussian_filter,
    grey_opening,
    h_maxima,
    reconstruct,
    relabel,
    watershed_split,
)


# ------------------------------------------------------------------ references (per component, Python loops)
def ref_reconstruct(seed: np.ndarray, image: np.ndarray, max_iter: int = 500) -> np.ndarray:
    current = np.minimum(seed, image)
    for _ in range(max_iter):
        grown = np.minimum(ndimage.grey_dilation(current, size=3), image)
        if np.array_equal(grown, current):
            break
        current = grown
    return current


def ref_h_maxima(image: np.ndarray, h: float, foreground: np.ndarray) -> np.ndarray:
    out = np.zeros(image.shape, bool)
    components, _ = ndimage.label(foreground)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        region = components[box] == index
        img = np.where(region, image[box], 0.0)
        dome = img - ref_reconstruct(img - h, img)
        out[box] |= region & (dome >= h - 1e-3) & (img > h)
    return out


def ref_flood(region: np.ndarray, height: np.ndarray, seeds: np.ndarray, levels: int,
              max_steps: int = 500) -> np.ndarray:
    labels = seeds.astype(np.int32)
    for level in np.linspace(1.0, 0.0, levels + 1)[1:]:
        allowed = region & (height >= level)
        for _ in range(max_steps):
            grown = ndimage.grey_dilation(labels, size=3)
            new = (labels == 0) & allowed & (grown > 0)
            if not new.any():
                break
            labels[new] = grown[new]
    rest, _ = ndimage.label(region & (labels == 0))
    return np.where(rest > 0, rest + labels.max(), labels)


def ref_watershed_split(foreground: np.ndarray, height: np.ndarray, markers: np.ndarray,
                        levels: int = 16, max_steps: int = 500) -> np.ndarray:
    components, _ = ndimage.label(foreground)
    out = np.zeros(foreground.shape, np.int32)
    next_id = 1
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        comp = components[box] == index
        seeds, n = ndimage.label(comp & (markers[box] > 0))
        seeds = ref_flood(comp, height[box], seeds, levels, max_steps) if n > 1 else comp.astype(np.int32)
        target = out[box]
        target[seeds > 0] = seeds[seeds > 0] + next_id - 1
        next_id += int(seeds.max())
    return relabel(out)


def ref_relabel(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


# ------------------------------------------------------------------ synthetic inputs
def blobs(seed: int, shape: tuple[int, int] = (90, 110)) -> np.ndarray:
    """Random overlapping discs and ellipses (touching nuclei, necks, small specks), opened and filled as the
    classical segmenter does."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    fg = np.zeros(shape, bool)
    for _ in range(rng.integers(3, 12)):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(2, 16), rng.uniform(2, 16)
        fg |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    return ndimage.binary_fill_holes(ndimage.binary_opening(fg, iterations=1))


def diagonal_pair() -> np.ndarray:
    """Two 4-connected components that touch only at a corner (8-neighbours), each with two domes."""
    fg = np.zeros((60, 60), bool)
    fg[5:30, 2:29] = True
    fg[30:58, 29:57] = True  # (29, 28) and (30, 29) are diagonal neighbours
    return fg


def distance_map(fg: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(ndimage.distance_transform_edt(fg), 1.0) * fg


CASES = [blobs(seed) for seed in range(12)] + [diagonal_pair()]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_h_maxima_equals_the_per_component_reference(index: int) -> None:
    fg = CASES[index]
    dist = distance_map(fg)
    for h in (0.5, 2.0):
        np.testing.assert_array_equal(h_maxima(dist, h, fg), ref_h_maxima(dist, h, fg))


@pytest.mark.parametrize("index", range(len(CASES)))
def test_watershed_split_equals_the_per_component_reference(index: int) -> None:
    fg = CASES[index]
    dist = distance_map(fg)
    height = dist / max(float(dist.max()), 1e-6)
    for markers in (ndimage.label(ref_h_maxima(dist, 2.0, fg))[0],  # the classical segmenter's markers
                    ndimage.label(fg & (height > 0.5))[0],  # the U-Net's rule
                    ndimage.label(fg & (np.random.default_rng(index).random(fg.shape) < 0.01))[0]):  # scattered
        got = watershed_split(fg, height, markers)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, ref_watershed_split(fg, height, markers))
        # a bool marker mask and the caller's components give the same
        np.testing.assert_array_equal(watershed_split(fg, height, markers > 0, components=ndimage.label(fg)), got)


def test_diagonal_contact_does_not_let_labels_or_domes_cross() -> None:
    fg = diagonal_pair()
    assert ndimage.label(fg)[1] == 2 and ndimage.label(fg, structure=np.ones((3, 3)))[1] == 1
    dist = distance_map(fg)
    markers = np.zeros(fg.shape, np.int32)
    markers[10, 10], markers[25, 24], markers[40, 40], markers[52, 50] = 1, 2, 3, 4
    height = dist / dist.max()
    np.testing.assert_array_equal(watershed_split(fg, height, markers), ref_watershed_split(fg, height, markers))


def test_flood_stopped_at_max_steps_goes_on_at_the_next_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """With few growth steps per level, levels end before stability: the flood must go on from every
    unlabelled allowed pixel at the next level, and pixels never reached become instances of their own."""
    from analysis import segmentation

    monkeypatch.setattr(segmentation, "MAX_FLOOD_STEPS", 2)
    for index in (0, 3, 7):
        fg = CASES[index]
        dist = distance_map(fg)
        height = dist / max(float(dist.max()), 1e-6)
        markers = ndimage.label(fg & (np.random.default_rng(index).random(fg.shape) < 0.01))[0]
        got = watershed_split(fg, height, markers)
        np.testing.assert_array_equal(got, ref_watershed_split(fg, height, markers, max_steps=2))
        assert got.max() > ref_watershed_split(fg, height, markers).max()  # unreached pieces were numbered


def test_reconstruct_equals_iterated_dilation() -> None:
    rng = np.random.default_rng(3)
    image = ndimage.gaussian_filter(rng.random((70, 80)), 3)
    for seed in (image - 0.02, np.where(rng.random(image.shape) < 0.01, image, 0.0)):
        for dtype in (np.float64, np.float32):
            got = reconstruct(seed.astype(dtype), image.astype(dtype))
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, ref_reconstruct(seed.astype(dtype), image.astype(dtype),
                                                               max_iter=10_000))


def test_opencv_equivalents_give_scipys_values() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        shape = tuple(int(v) for v in rng.integers(8, 70, 2))
        img = rng.random(shape).astype(np.float32)
        np.testing.assert_array_equal(grey_opening(img, disk(3)), ndimage.grey_opening(img, footprint=disk(3)))
        mask = rng.random(shape) < 0.05 + 0.3 * rng.random()
        for r in (1, 2, 6):
            np.testing.assert_array_equal(dilate_cross(mask, r), ndimage.binary_dilation(mask, iterations=r))
        fg = ndimage.binary_dilation(mask, iterations=2) & ~(rng.random(shape) < 0.02)
        np.testing.assert_array_equal(distance_transform(fg), ndimage.distance_transform_edt(fg))
        np.testing.assert_array_equal(binary_opening_cross(fg), ndimage.binary_opening(fg, iterations=1))
        rings = fg & ~ndimage.binary_erosion(fg, iterations=2)
        np.testing.assert_array_equal(fill_holes(rings), ndimage.binary_fill_holes(rings))
        labels, _ = ndimage.label(fg)
        labels[labels % 3 == 0] = 0
        np.testing.assert_array_equal(relabel(labels), ref_relabel(labels))
    assert np.array_equal(distance_transform(np.ones((9, 9), bool)), ndimage.distance_transform_edt(np.ones((9, 9))))


def test_dilate_cross_of_field_sized_masks_gives_scipys_values() -> None:
    """From _BOX_MIN_PIXELS on, only the mask's bounding box (grown by the iterations) is dilated: sparse masks
    at the edges and corners, a mask over the whole field and an empty one give scipy's dilation."""
    from analysis.segmentation import _BOX_MIN_PIXELS

    rng = np.random.default_rng(6)
    shape = (260, 300)
    assert shape[0] * shape[1] >= _BOX_MIN_PIXELS
    for box in ((slice(0, 12), slice(0, 40)), (slice(150, 153), slice(290, 300)), (slice(0, 260), slice(0, 300)),
                (slice(100, 100), slice(0, 0))):
        mask = np.zeros(shape, bool)
        mask[box] = rng.random(mask[box].shape) < 0.3
        for iterations in (1, 9, 30):
            np.testing.assert_array_equal(dilate_cross(mask, iterations),
                                          ndimage.binary_dilation(mask, iterations=iterations))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_opencv_gaussian_gives_scipys_values(dtype: type) -> None:
    rng = np.random.default_rng(7)
    for shape in ((40, 57), (300, 200), (5, 30)):
        img = (rng.random(shape) * rng.integers(1, 300)).astype(dtype)
        for sigma in (1.0, 1.5, 2.0, 6.4, 14.4):
            for order in ((0, 0), (0, 2), (2, 0), (1, 1)):
                got, want = gaussian_filter(img, sigma, order), ndimage.gaussian_filter(img, sigma, order=order)
                assert got.dtype == want.dtype
                if dtype is np.float32 and order == (0, 0):  # scipy's float32 passes, rounded alike: equal
                    np.testing.assert_array_equal(got, want)
                else:  # summation order differs: equal up to float rounding
                    np.testing.assert_allclose(got, want, rtol=0, atol=2e-13 if dtype is np.float64 else 2e-6
                                               * max(1.0, float(np.abs(want).max())))


def test_field_filled_replaces_annotations_by_the_median_once() -> None:
    from analysis.types import FieldImage

    rng = np.random.default_rng(8)
    signal = rng.random((30, 40)).astype(np.float32)
    mask = np.zeros(signal.shape, bool)
    mask[2:6, 3:20] = True
    field = FieldImage(signal=signal, bit_depth=8, source_format="PNG", channel_rule="", annotation_mask=mask)
    want = signal.copy()
    want[mask] = np.median(signal[~mask])
    np.testing.assert_array_equal(field.filled, want)
    assert field.filled is field.filled and not field.filled.flags.writeable
    plain = FieldImage(signal=signal, bit_depth=8, source_format="PNG", channel_rule="",
                       annotation_mask=np.zeros(signal.shape, bool))
    assert plain.filled is signal


def test_batched_tta_equals_one_pass_per_view() -> None:
    from analysis.models.classifier import ModelConfig, create_model
    from analysis.models.inference import predict_proba
    from analysis.preprocess import to_float

    torch.manual_seed(0)
    config = ModelConfig(arch="resnet10_w32", img_size=32)
    model = create_model(config).eval()
    x = np.random.default_rng(0).integers(0, 256, (7, config.in_chans, 32, 32), np.uint8)
    with torch.inference_mode():
        batch = to_float(torch.as_tensor(x))
        per_view = sum(torch.softmax(model(dihedral(batch, k)).float(), 1) for k in range(8)) / 8
    got = predict_proba(model, x, tta=8, batch_size=4, precision="fp32")
    np.testing.assert_allclose(got, per_view.numpy(), atol=1e-6)
    bf16 = predict_proba(model, x, tta=8, batch_size=4, precision="bf16")
    assert np.abs(bf16 - per_view.numpy()).max() < 0.05


def test_float32_h_maxima_equals_float64_on_real_fields(shared_data: Path) -> None:
    """h_maxima reconstructs in float32 (less memory traffic); on the distance maps of real AGH fields its
    markers are those of the float64 reconstruction (``reconstruct`` itself is exact in either dtype)."""
    from analysis.decode import decode_image
    from analysis.segmentation import ClassicalSegmenter

    seg = ClassicalSegmenter()
    for path in sorted((shared_data / "agh-fields").glob("*.png"))[:5]:
        signal = decode_image(path.read_bytes()).filled.astype(np.float32)
        smooth = gaussian_filter(grey_opening(signal, disk(seg.dot_radius)), seg.sigma)
        fg = fill_holes(binary_opening_cross(smooth > np.percentile(smooth, 60)))
        dist = gaussian_filter(distance_transform(fg), 1.0) * fg
        components, _ = ndimage.label(fg)
        img = np.where(components > 0, dist, 0.0)
        float64 = (components > 0) & (img - reconstruct(img - seg.h, img, components) >= seg.h - 1e-3) & (img > seg.h)
        np.testing.assert_array_equal(h_maxima(dist, seg.h, fg), float64)


@pytest.mark.parametrize("order", [(0, 0), (0, 2), (2, 0), (1, 1)])
def test_float32_gaussian_is_within_float32_rounding_of_scipys(order: tuple[int, int]) -> None:
    from analysis.segmentation import gaussian_filter32

    image = np.random.default_rng(3).random((70, 90)).astype(np.float32)
    for sigma in (1.0, 2.0, 6.4):
        fast = gaussian_filter32(image, sigma, order)
        assert fast.dtype == np.float32
        np.testing.assert_allclose(fast, ndimage.gaussian_filter(image.astype(np.float64), sigma, order=order),
                                   atol=2e-6)


def test_classical_labels_in_float32_equal_the_float64_labels(shared_data: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The segmenter smooths and measures distances in float32; on real AGH fields its labels are those of the
    float64 code it replaced (scipy's dtypes: float32 smoothing of the signal, float64 distances)."""
    from analysis import segmentation
    from analysis.decode import decode_image

    fields = [decode_image(p.read_bytes()) for p in sorted((shared_data / "agh-fields").glob("*.png"))[:4]]
    fast = [segmentation.ClassicalSegmenter().segment(f) for f in fields]
    monkeypatch.setattr(segmentation, "gaussian_filter32", gaussian_filter)
    monkeypatch.setattr(segmentation, "distance_transform32", ndimage.distance_transform_edt)  # = distance_transform
    for field, labels in zip(fields, fast, strict=True):
        assert labels.max() > 10
        np.testing.assert_array_equal(segmentation.ClassicalSegmenter().segment(field), labels)
