"""Stage 2: nucleus instance segmentation of a decoded field.

Two segmenters implement :class:`analysis.types.Segmenter`: :class:`ClassicalSegmenter` here and the U-Net
(:class:`analysis.models.unet.UnetSegmenter`, which uses the helpers below). Both are pure functions of the
image and both ignore the field's ``annotation_mask`` (burned-in scale bars and text): masked pixels are replaced by the
background level before segmenting, and any instance that touches the (dilated) mask is dropped.

* :class:`ClassicalSegmenter`: bright-dot suppression (grey opening), Gaussian smoothing, Otsu threshold,
  distance-transform watershed to split touching nuclei (markers = h-maxima of the smoothed distance map),
  then size filters. scipy.ndimage and OpenCV (the same values as scipy where OpenCV is faster), the flood
  and the h-maxima reconstruction compiled (:mod:`analysis.geodesic`); no Python loop over objects.
* U-Net: foreground and distance maps predicted by a network, instances by :func:`labels_from_maps`.

:func:`analysis.build.default_segmenter` chooses between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np
from scipy import ndimage

from analysis import stats
from analysis.geodesic import MAX_FLOOD_STEPS, flood_levels_in_place, reconstruct_in_place
from analysis.types import FieldImage


# --------------------------------------------------------------------------------------------- helpers
def normalize(signal: np.ndarray, lo: float = 0.5, hi: float = 99.8, floor: float = 0.02) -> np.ndarray:
    """Percentile stretch to ~[0, 1] (clipped to [0, 2]); the range is at least ``floor`` of full scale."""
    p_lo, p_hi = stats.percentile(signal, [lo, hi])  # = np.percentile
    return np.clip((signal - p_lo) / max(p_hi - p_lo, floor), 0.0, 2.0).astype(np.float32)


def drop_annotated(labels: np.ndarray, mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """Remove every instance that touches the annotation mask (dilated by ``margin``), then relabel."""
    if mask.any():
        touched = np.zeros(int(labels.max()) + 1, bool)
        touched[labels[dilate_cross(mask, margin)]] = True
        touched[0] = False
        return relabel(labels, drop=touched)  # = relabel(np.where(touched[labels], 0, labels))
    return relabel(labels)


def relabel(labels: np.ndarray, drop: np.ndarray | None = None, counts: np.ndarray | None = None) -> np.ndarray:
    """Consecutive labels 1..N (0 stays background), int32. ``drop`` (bool per label): those labels become 0
    first, i.e. ``relabel(np.where(drop[labels], 0, labels))`` in one pass; ``counts``: ``np.bincount`` of
    ``labels`` when the caller has it."""
    if not labels.size:
        return labels.astype(np.int32)
    present = (np.bincount(labels.ravel()) if counts is None else counts) > 0  # ascending ids (no sort)
    if drop is not None:
        present &= ~drop[:present.size]
    present[0] = False
    ids = np.flatnonzero(present)
    if ids.size == present.size - 1:  # 1..max all kept: the identity
        return labels.astype(np.int32)
    lut = np.zeros(present.size, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def size_filter(labels: np.ndarray, min_area: int, max_area: int | None = None) -> np.ndarray:
    """Drop instances smaller than ``min_area`` (or larger than ``max_area``) pixels; relabel."""
    areas = np.bincount(labels.ravel())
    bad = areas < min_area
    if max_area is not None:
        bad |= areas > max_area
    bad[0] = False
    return relabel(labels, drop=bad, counts=areas)  # = relabel(np.where(bad[labels], 0, labels))


def watershed_split(foreground: np.ndarray, height: np.ndarray, markers: np.ndarray, levels: int = 16,
                    components: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """Marker-controlled watershed of ``height`` (higher = more central, [0, 1]) inside ``foreground``.

    Per foreground component (4-connected): with at most one marker it is one instance; otherwise it is
    flooded by levels: from the top level down, every marker's region grows (3×3 geodesic dilation, repeated
    to stability, the larger marker label winning a tie) into the component's pixels at or above the level;
    pixels no marker reaches form instances of their own. Instances are numbered by component (raster order
    of their first pixel), within one component markers first (raster order), then the unreached pieces.
    (scipy's ``watershed_ift`` was not used: it lets one marker flood another's basin on plateaus.)

    All components are flooded at once by :func:`analysis.geodesic.flood_levels_in_place` (compiled; a pixel
    only takes labels of its own component), so the result is the per-component flood's. ``markers``: a
    label image or a bool mask (only ``markers > 0`` counts: markers are its 4-connected pieces);
    ``components``: ``ndimage.label(foreground)`` when the caller has it.
    """
    components, n = components if components is not None else ndimage.label(foreground)
    if n == 0:
        return np.zeros(foreground.shape, np.int32)
    seeds, n_seeds = ndimage.label((markers > 0) & (components > 0))
    seed_comp = _component_of(seeds, n_seeds, components)
    per_comp = np.bincount(seed_comp[1:], minlength=n + 1)
    flooded = per_comp >= 2
    flooded[0] = False
    kept = np.where(flooded[seed_comp], np.arange(n_seeds + 1, dtype=np.int32), 0)  # seeds in flooded components
    kept[0] = 0
    labels = kept[seeds]
    unreached = 0
    if flooded.any():
        thresholds = np.linspace(1.0, 0.0, levels + 1)[1:]
        unreached = flood_levels_in_place(labels, np.ascontiguousarray(height), components, flooded, thresholds,
                                          MAX_FLOOD_STEPS)
    if unreached:  # pieces no marker reached (levels stopped at MAX_FLOOD_STEPS): instances of their own
        rest, n_rest = ndimage.label(flooded[components] & (labels == 0))
        rest_comp = _component_of(rest, n_rest, components)
    else:
        rest, n_rest, rest_comp = None, 0, np.zeros(1, np.int64)
    # order of the instances: (component, kind: whole / marker 0, unreached 1, label within its kind)
    whole = np.flatnonzero(~flooded[1:]) + 1
    marker_ids = np.flatnonzero(flooded[seed_comp[1:]]) + 1
    rest_ids = np.arange(1, n_rest + 1)
    comp_key = np.concatenate([whole, seed_comp[marker_ids], rest_comp[rest_ids]])
    kind_key = np.concatenate([np.zeros(len(whole) + len(marker_ids), np.int64), np.ones(n_rest, np.int64)])
    id_key = np.concatenate([np.zeros(len(whole), np.int64), marker_ids, rest_ids])
    final = np.empty(len(comp_key), np.int32)
    final[np.lexsort((id_key, kind_key, comp_key))] = np.arange(1, len(comp_key) + 1, dtype=np.int32)
    whole_lut = np.zeros(n + 1, np.int32)
    whole_lut[whole] = final[:len(whole)]
    marker_lut = np.zeros(n_seeds + 1, np.int32)
    marker_lut[marker_ids] = final[len(whole):len(whole) + len(marker_ids)]
    out = whole_lut[components]
    out += marker_lut[labels]
    if rest is not None:
        rest_lut = np.zeros(n_rest + 1, np.int32)
        rest_lut[rest_ids] = final[len(whole) + len(marker_ids):]
        out += rest_lut[rest]
    return out


def _component_of(pieces: np.ndarray, n_pieces: int, components: np.ndarray) -> np.ndarray:
    """Per label of ``pieces`` (each lying inside one component), its component's label (index 0: 0); read
    at the labelled pixels only."""
    out = np.zeros(n_pieces + 1, np.int64)
    at = np.flatnonzero(pieces)
    out[pieces.ravel()[at]] = components.ravel()[at]
    return out


def reconstruct(seed: np.ndarray, image: np.ndarray, components: np.ndarray | None = None) -> np.ndarray:
    """Grey-level reconstruction by dilation of ``seed`` under ``image`` (8-neighbourhood), to stability.

    With ``components`` (a label image), within each component separately: a pixel is reached only along
    paths inside its own component; pixels outside every component keep ``min(seed, image)``. Without it,
    the whole image is one component. Equivalent to iterating ``min(3×3 grey dilation, image)`` to
    stability (compiled, :func:`analysis.geodesic.reconstruct_in_place`; exact: only comparisons).
    """
    image = np.asarray(image)
    exact = np.minimum(seed, image)
    work = np.float32 if image.dtype == np.float32 else np.float64
    current = exact.astype(work)  # a fresh array, raised in place
    if components is None:
        components = np.ones(image.shape, np.int32)
    components = np.ascontiguousarray(components, np.int32)
    reconstruct_in_place(current, np.ascontiguousarray(image, work), components)
    if current.dtype == exact.dtype:
        return current
    out = current.astype(exact.dtype)  # outside the components: min(seed, image) unrounded
    np.copyto(out, exact, where=components == 0)
    return out


def h_maxima(image: np.ndarray, h: float, foreground: np.ndarray,
             components: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """Bool mask of the regional maxima of dynamic ≥ ``h`` (one plateau per dome), per foreground component.

    Per 4-connected component (the image set to 0 outside it): ``dome = image − reconstruct(image − h,
    image)``; kept where ``dome ≥ h − 1e-3`` and ``image > h``. All components at once (see
    :func:`reconstruct`); the result is the per-component one (there, the reconstruction is only used at
    pixels above ``h``, where paths leaving the component, which pass through 0, cannot matter). In float32
    (half the memory traffic of float64; the domes are compared with a 1e-3 tolerance, float32 rounding of
    distances ≤ ~100 px is ~1e-5): the same markers as float64 on every AGH and uobcs-edges field.
    ``components``: ``ndimage.label(foreground)`` when the caller has it.
    """
    components, _ = components if components is not None else ndimage.label(foreground)
    img = np.where(components > 0, image, 0.0).astype(np.float32)
    dome = img - reconstruct(img - np.float32(h), img, components)
    return (components > 0) & (dome >= h - 1e-3) & (img > h)


def grey_opening(image: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.grey_opening(image, footprint=footprint)`` computed with OpenCV (same values, ~10×
    faster). scipy reflects at the border; for a footprint symmetric about its centre every reflected pixel
    lies inside the footprint anyway, so OpenCV's reflected border gives the same minima and maxima."""
    kernel = np.ascontiguousarray(footprint, dtype=np.uint8)
    if image.dtype not in (np.uint8, np.float32, np.float64) or kernel.shape[0] % 2 == 0 or \
            kernel.shape[1] % 2 == 0 or not np.array_equal(kernel, kernel[::-1, ::-1]):
        return ndimage.grey_opening(image, footprint=footprint)
    image = np.ascontiguousarray(image)
    eroded = cv2.erode(image, kernel, borderType=cv2.BORDER_REFLECT)
    return cv2.dilate(eroded, kernel, borderType=cv2.BORDER_REFLECT)


_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)


def binary_opening_cross(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_opening(mask, iterations=1)`` (cross; outside the image counts as background)
    with OpenCV."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    eroded = cv2.erode(m, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.dilate(eroded, _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes(mask)``: background that is not 4-connected to the image border is
    filled (one labelling instead of scipy's iterated dilations)."""
    background, _ = ndimage.label(~mask)
    border = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    open_to_border = np.zeros(int(background.max()) + 1, bool)
    open_to_border[border] = True
    open_to_border[0] = False
    return ~open_to_border[background]


_BOX_MIN_PIXELS = 1 << 16
"""From this many pixels :func:`dilate_cross` dilates only the mask's bounding box (small crops: the whole)."""


def dilate_cross(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``scipy.ndimage.binary_dilation(mask, iterations=iterations)`` (cross, border False) in one OpenCV
    dilation by the diamond ``|dy| + |dx| <= iterations`` (what the iterated cross grows to). On a field-sized
    mask only its bounding box grown by ``iterations`` is dilated (nothing outside it can be reached: burned-in
    annotations are a small corner of the field)."""
    if iterations < 1:
        return ndimage.binary_dilation(mask, iterations=iterations)
    if mask.size < _BOX_MIN_PIXELS:
        return _dilate_diamond(mask, iterations)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    out = np.zeros(mask.shape, bool)
    if rows.size:
        box = (slice(max(rows[0] - iterations, 0), rows[-1] + iterations + 1),
               slice(max(cols[0] - iterations, 0), cols[-1] + iterations + 1))
        out[box] = _dilate_diamond(mask[box], iterations)
    return out


def _dilate_diamond(mask: np.ndarray, iterations: int) -> np.ndarray:
    y, x = np.ogrid[-iterations:iterations + 1, -iterations:iterations + 1]
    diamond = (np.abs(y) + np.abs(x) <= iterations).astype(np.uint8)
    grown = cv2.dilate(np.ascontiguousarray(mask, dtype=np.uint8), diamond, borderType=cv2.BORDER_CONSTANT,
                       borderValue=0)
    return grown.astype(bool)


def distance_transform32(foreground: np.ndarray) -> np.ndarray:
    """Euclidean distance of each foreground pixel to the background, float32 (OpenCV's exact transform; the
    float32 rounding of :func:`distance_transform`'s values)."""
    if foreground.all() or not foreground.any():
        return ndimage.distance_transform_edt(foreground).astype(np.float32)
    return cv2.distanceTransform(foreground.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def distance_transform(foreground: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.distance_transform_edt(foreground)`` (float64) via OpenCV's exact Euclidean transform
    (~5× faster): OpenCV returns float32 distances; squared and rounded they are the exact integer squared
    distances, whose float64 square roots are scipy's values."""
    if foreground.all() or not foreground.any():
        return ndimage.distance_transform_edt(foreground)
    return np.sqrt(np.rint(np.square(distance_transform32(foreground), dtype=np.float64)))


def gaussian_kernel(sigma: float, order: int = 0, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian (``order`` 0, 1 or 2: derivative) weights, radius ``int(truncate σ + ½)``,
    reversed for correlation (as scipy applies them)."""
    if order not in (0, 1, 2):
        raise ValueError("order must be 0, 1 or 2")
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    var = float(sigma) * float(sigma)
    phi = np.exp(-0.5 / var * x * x)
    phi /= phi.sum()
    poly = (np.ones_like(x), -x / var, x * x / (var * var) - 1.0 / var)[order]
    return np.ascontiguousarray((poly * phi)[::-1])


def gaussian_filter(image: np.ndarray, sigma: float, order: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(image, sigma, order=order)`` (2-D, mode ``reflect``, truncate 4) with
    OpenCV, 2-6× faster; the same values up to float rounding. Like scipy, float32 input is filtered along
    axis 0, rounded to float32, then along axis 1 (each pass accumulating in float64); float64 in one pass."""
    ky, kx = gaussian_kernel(sigma, order[0]), gaussian_kernel(sigma, order[1])
    if image.ndim != 2 or image.dtype not in (np.float32, np.float64) or min(image.shape) <= len(kx) // 2:
        return ndimage.gaussian_filter(image, sigma, order=order)
    src, one = np.ascontiguousarray(image, np.float64), np.ones(1)
    if image.dtype == np.float64:
        return cv2.sepFilter2D(src, cv2.CV_64F, kx, ky, borderType=cv2.BORDER_REFLECT)
    cols = cv2.sepFilter2D(src, cv2.CV_64F, one, ky, borderType=cv2.BORDER_REFLECT).astype(np.float32)
    return cv2.sepFilter2D(cols.astype(np.float64), cv2.CV_64F, kx, one,
                           borderType=cv2.BORDER_REFLECT).astype(np.float32)


def gaussian_filter32(image: np.ndarray, sigma: float, order: tuple[int, int] = (0, 0)) -> np.ndarray:
    """:func:`gaussian_filter` computed in float32 throughout (scipy's kernels and ``reflect`` border, OpenCV's
    separable filter): 3-4× faster than its float64 passes, the values within float32 rounding of them. For
    images whose results are thresholded or summarised, not stored pixel for pixel."""
    image = np.asarray(image, np.float32)
    if image.ndim != 2 or min(image.shape) <= int(4.0 * sigma + 0.5):
        return gaussian_filter(image, sigma, order).astype(np.float32)
    ky, kx = (gaussian_kernel(sigma, o).astype(np.float32) for o in order)
    return cv2.sepFilter2D(image, cv2.CV_32F, kx, ky, borderType=cv2.BORDER_REFLECT)


def disk(radius: int) -> np.ndarray:
    """Boolean disc footprint of the given radius (``2 * radius + 1`` px a side)."""
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def typical_area(areas: np.ndarray | list[int]) -> float:
    """Area-weighted median of object areas: the size of the object an average *pixel* belongs to.

    Unlike the plain median it is not pulled down by many small fragments or specks (a field of 50 whole
    nuclei and 200 dot-sized pieces still has a nucleus-sized typical area).
    """
    a = np.sort(np.asarray(areas, dtype=np.float64))
    if not a.size:
        return 0.0
    return float(a[np.searchsorted(np.cumsum(a), a.sum() / 2)])


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample."""
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centers) - np.cumsum(hist * centers)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centers[int(np.argmax(between[:-1]))])


# ------------------------------------------------------------------------------------------ classical
@dataclass(frozen=True)
class ClassicalSegmenter:
    """Otsu threshold on a dot-suppressed, smoothed signal + distance-transform watershed + size filters.

    Parameters are in pixels of the input. The foreground is thresholded on the signal after a grey
    opening with a disc of ``dot_radius`` (0: off): punctate patterns (centromere, nuclear dots, nucleoli)
    put bright 2-6 px dots in a dim nucleus, and Otsu on the raw signal then separates dots from everything
    else and shatters each nucleus into groups of dots; the opening removes structures narrower than the
    disc, so the threshold falls between the nucleus' diffuse staining and the background, and whole nuclei
    are kept (their dots included). Markers are the h-maxima of the smoothed distance map: two
    touching nuclei are split when the neck between them is at least ``h`` px narrower (in distance) than
    both centres. ``min_contrast`` (full-scale units): when the Otsu threshold of the smoothed signal is
    less than this above its median, the field is taken as blank (no nuclei).
    """

    sigma: float = 2.0
    dot_radius: int = 3
    h: float = 2.0
    min_area: int = 40
    max_area_fraction: float = 0.25
    min_contrast: float = 0.015
    name: ClassVar[str] = "classical"

    def segment(self, field: FieldImage) -> np.ndarray:
        signal = field.filled.astype(np.float32, copy=False)
        smooth = gaussian_filter32(signal, self.sigma)
        threshold = otsu_threshold(smooth[::2, ::2].ravel())
        if threshold - float(stats.median(smooth)) < self.min_contrast:  # = np.median
            return np.zeros(signal.shape, np.int32)
        if self.dot_radius > 0:
            opened = grey_opening(signal, disk(self.dot_radius))
            smooth = gaussian_filter32(opened, self.sigma)
            threshold = otsu_threshold(smooth[::2, ::2].ravel())
        foreground = fill_holes(binary_opening_cross(smooth > threshold))
        dist = gaussian_filter32(distance_transform32(foreground), 1.0) * foreground
        components = ndimage.label(foreground)  # shared by the markers and the watershed
        markers = h_maxima(dist, self.h, foreground, components)
        labels = watershed_split(foreground, dist / max(float(dist.max()), 1e-6), markers, components=components)
        labels = size_filter(labels, self.min_area, int(self.max_area_fraction * signal.size))
        return drop_annotated(labels, field.annotation_mask)


# ----------------------------------------------------------------------------------------------- U-Net helpers
def tiles(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``length`` with windows of ``tile`` overlapping by at least ``overlap``."""
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def estimate_scale(signal: np.ndarray, nucleus_px: float = 28.0, lo: float = 0.15, hi: float = 1.0,
                   default: float = 0.5) -> float:
    """Working scale that brings the typical nucleus to ``nucleus_px`` px across (clipped to [lo, hi]).

    The typical nucleus is the area-weighted median area of the Otsu foreground components (on a 2×
    downsampled signal smoothed with sigma 2; components under 20 px ignored), so that speckles and debris
    do not count; ``default`` when there is no foreground.
    """
    small = gaussian_filter(signal[::2, ::2].astype(np.float32), 2.0)
    threshold = otsu_threshold(small.ravel())
    if threshold - float(stats.median(small)) < 0.015:  # = np.median
        return default
    components, _n = ndimage.label(small > threshold)
    areas = np.bincount(components.ravel())[1:]
    areas = areas[areas >= 20]
    if not len(areas):
        return default
    typical = typical_area(areas)
    diameter = 2 * 2 * np.sqrt(typical / np.pi)  # ×2: back to input pixels
    return float(np.clip(nucleus_px / diameter, lo, hi))


def labels_from_maps(prob: np.ndarray, dist: np.ndarray, annotation: np.ndarray | None = None,
                     fg_threshold: float = 0.5, marker_threshold: float = 0.5, min_area: int = 40) -> np.ndarray:
    """Instances from foreground probability + normalised distance maps (markers: ``dist > threshold``)."""
    foreground = fill_holes(prob > fg_threshold)
    markers, _ = ndimage.label(foreground & (dist > marker_threshold))
    labels = watershed_split(foreground, dist, markers)
    labels = size_filter(labels, min_area)
    return drop_annotated(labels, annotation) if annotation is not None else labels
