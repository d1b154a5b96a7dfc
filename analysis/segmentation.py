"""Stage 2: nucleus instance segmentation of a decoded field.

Two segmenters implement :class:`analysis.types.Segmenter`: :class:`ClassicalSegmenter` here and the U-Net
(:class:`analysis.models.unet.UnetSegmenter`, which uses the helpers below). Both are pure functions of the
image and both ignore the field's ``annotation_mask`` (burned-in scale bars and text): masked pixels are replaced by the
background level before segmenting, and any instance that touches the (dilated) mask is dropped.

* :class:`ClassicalSegmenter`: bright-dot suppression (grey opening), Gaussian smoothing, Otsu threshold,
  distance-transform watershed to split touching nuclei (markers = h-maxima of the smoothed distance map),
  then size filters. scipy.ndimage only.
* U-Net: foreground and distance maps predicted by a network, instances by :func:`labels_from_maps`.

:func:`analysis.build.default_segmenter` chooses between them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import ndimage

from analysis.types import FieldImage


# --------------------------------------------------------------------------------------------- helpers
def normalize(signal: np.ndarray, lo: float = 0.5, hi: float = 99.8, floor: float = 0.02) -> np.ndarray:
    """Percentile stretch to ~[0, 1] (clipped to [0, 2]); the range is at least ``floor`` of full scale."""
    p_lo, p_hi = np.percentile(signal, [lo, hi])
    return np.clip((signal - p_lo) / max(p_hi - p_lo, floor), 0.0, 2.0).astype(np.float32)


def fill_annotations(signal: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``signal`` with the annotation pixels replaced by the median of the unmasked ones (the background)."""
    if not mask.any():
        return signal
    out = signal.copy()
    out[mask] = np.median(signal[~mask]) if (~mask).any() else 0.0
    return out


def drop_annotated(labels: np.ndarray, mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """Remove every instance that touches the annotation mask (dilated by ``margin``), then relabel."""
    if mask.any():
        touched = np.unique(labels[ndimage.binary_dilation(mask, iterations=margin)])
        labels = np.where(np.isin(labels, touched[touched > 0]), 0, labels)
    return relabel(labels)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive labels 1..N (0 stays background), int32."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def size_filter(labels: np.ndarray, min_area: int, max_area: int | None = None) -> np.ndarray:
    """Drop instances smaller than ``min_area`` (or larger than ``max_area``) pixels; relabel."""
    areas = np.bincount(labels.ravel())
    bad = areas < min_area
    if max_area is not None:
        bad |= areas > max_area
    bad[0] = False
    return relabel(np.where(bad[labels], 0, labels))


def watershed_split(foreground: np.ndarray, height: np.ndarray, markers: np.ndarray, levels: int = 16) -> np.ndarray:
    """Marker-controlled watershed of ``height`` (higher = more central, [0, 1]) inside ``foreground``.

    Per foreground component: with at most one marker it is one instance; otherwise it is flooded by levels:
    from the top level down, every marker's region grows (3×3 geodesic dilation, repeated to stability) into
    the component's pixels at or above the level; pixels no marker reaches form instances of their own.
    (scipy's ``watershed_ift`` was not used: it lets one marker flood another's basin on plateaus.)
    """
    components, _ = ndimage.label(foreground)
    out = np.zeros(foreground.shape, np.int32)
    next_id = 1
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        comp = components[box] == index
        seeds, n = ndimage.label(comp & (markers[box] > 0))
        seeds = _flood(comp, height[box], seeds, levels) if n > 1 else comp.astype(np.int32)
        target = out[box]
        target[seeds > 0] = seeds[seeds > 0] + next_id - 1
        next_id += int(seeds.max())
    return relabel(out)


def _flood(region: np.ndarray, height: np.ndarray, seeds: np.ndarray, levels: int) -> np.ndarray:
    labels = seeds.astype(np.int32)
    for level in np.linspace(1.0, 0.0, levels + 1)[1:]:
        allowed = region & (height >= level)
        for _ in range(500):
            grown = ndimage.grey_dilation(labels, size=3)
            new = (labels == 0) & allowed & (grown > 0)
            if not new.any():
                break
            labels[new] = grown[new]
    rest, _ = ndimage.label(region & (labels == 0))
    return np.where(rest > 0, rest + labels.max(), labels)


def reconstruct(seed: np.ndarray, image: np.ndarray, max_iter: int = 500) -> np.ndarray:
    """Grey-level reconstruction by dilation of ``seed`` under ``image`` (iterated 3×3 dilations)."""
    current = np.minimum(seed, image)
    for _ in range(max_iter):
        grown = np.minimum(ndimage.grey_dilation(current, size=3), image)
        if np.array_equal(grown, current):
            break
        current = grown
    return current


def h_maxima(image: np.ndarray, h: float, foreground: np.ndarray) -> np.ndarray:
    """Bool mask of the regional maxima of dynamic ≥ ``h`` (one plateau per dome), per foreground component."""
    out = np.zeros(image.shape, bool)
    components, _ = ndimage.label(foreground)
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        region = components[box] == index
        img = np.where(region, image[box], 0.0)
        dome = img - reconstruct(img - h, img)
        out[box] |= region & (dome >= h - 1e-3) & (img > h)
    return out


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
        signal = fill_annotations(field.signal, field.annotation_mask).astype(np.float32, copy=False)
        smooth = ndimage.gaussian_filter(signal, self.sigma)
        threshold = otsu_threshold(smooth[::2, ::2].ravel())
        if threshold - float(np.median(smooth)) < self.min_contrast:
            return np.zeros(signal.shape, np.int32)
        if self.dot_radius > 0:
            opened = ndimage.grey_opening(signal, footprint=disk(self.dot_radius))
            smooth = ndimage.gaussian_filter(opened, self.sigma)
            threshold = otsu_threshold(smooth[::2, ::2].ravel())
        foreground = ndimage.binary_opening(smooth > threshold, iterations=1)
        foreground = ndimage.binary_fill_holes(foreground)
        dist = ndimage.gaussian_filter(ndimage.distance_transform_edt(foreground), 1.0) * foreground
        markers, _ = ndimage.label(h_maxima(dist, self.h, foreground))
        labels = watershed_split(foreground, dist / max(float(dist.max()), 1e-6), markers)
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
    small = ndimage.gaussian_filter(signal[::2, ::2].astype(np.float32), 2.0)
    threshold = otsu_threshold(small.ravel())
    if threshold - float(np.median(small)) < 0.015:
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
    foreground = ndimage.binary_fill_holes(prob > fg_threshold)
    markers, _ = ndimage.label(foreground & (dist > marker_threshold))
    labels = watershed_split(foreground, dist, markers)
    labels = size_filter(labels, min_area)
    return drop_annotated(labels, annotation) if annotation is not None else labels
