"""Shared builders for the stage tests (cells, intensity, specimen, analyze): fields, labels, fakes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from analysis.types import FieldImage
from hep2.synthetic import synthetic_field
from hep2.vocabulary import CELL_PATTERNS, Pattern


def make_field(signal: np.ndarray, annotation: np.ndarray | None = None) -> FieldImage:
    sig = np.asarray(signal, dtype=np.float32)
    ann = np.zeros(sig.shape, bool) if annotation is None else annotation
    return FieldImage(signal=sig, bit_depth=8, source_format="PNG", channel_rule="test", annotation_mask=ann)


def threshold_labels(signal: np.ndarray, level: float | None = None, sigma: float = 1.5) -> np.ndarray:
    """Instances by smoothing + a global threshold (midway between background and bright pixels by default)."""
    smooth = ndimage.gaussian_filter(signal.astype(np.float64), sigma)
    if level is None:
        lo, hi = np.percentile(smooth, [50, 99.5])
        level = lo + 0.3 * (hi - lo)
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(smooth > level, iterations=1))
    return ndimage.label(mask)[0].astype(np.int32)


def synthetic(pattern: Pattern = Pattern.HOMOGENEOUS, brightness: float = 150.0, seed: int = 0,
              size: tuple[int, int] = (256, 320), cells: int = 12) -> FieldImage:
    rgb = synthetic_field(pattern, size=size, cells=cells, brightness=brightness, seed=seed)
    return make_field(rgb[..., 1] / 255.0)


def disk_field(disks: Sequence[tuple[float, float, float, float, float]], shape: tuple[int, int] = (300, 400),
               background: float = 0.03) -> tuple[FieldImage, np.ndarray]:
    """Ellipses (cy, cx, ry, rx, value) on a flat background → field and their exact labels (1..N)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    signal = np.full(shape, background, np.float32)
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx, ry, rx, value) in enumerate(disks, start=1):
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        signal[inside] = value
        labels[inside] = i
    return make_field(signal), labels


def agh_crop(shared_data: Path, name: str, box: tuple[int, int, int, int]) -> FieldImage:
    """A (y0, x0, y1, x1) crop of an AGH field's green (FITC) channel, away from the scale bar."""
    rgb = np.asarray(Image.open(shared_data / "agh-fields" / name).convert("RGB"))
    y0, x0, y1, x1 = box
    return make_field(rgb[y0:y1, x0:x1, 1] / 255.0)


def one_hot_probs(n: int, pattern: Pattern, p: float = 0.9) -> np.ndarray:
    k = len(CELL_PATTERNS)
    probs = np.full((n, k), (1.0 - p) / (k - 1))
    probs[:, CELL_PATTERNS.index(pattern)] = p
    return probs


class RecordingClassifier:
    """Returns fixed probabilities and remembers every batch it was given."""

    def __init__(self, pattern: Pattern = Pattern.HOMOGENEOUS, p: float = 0.9) -> None:
        self.pattern, self.p, self.calls = pattern, p, []

    def predict(self, crops):
        self.calls.append(list(crops))
        return one_hot_probs(len(crops), self.pattern, self.p)
