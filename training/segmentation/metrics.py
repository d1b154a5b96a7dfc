"""Segmentation metrics: pixel Dice / IoU and object-level F1 at an IoU threshold (Hungarian matching)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class SegScores:
    """Counts that add up over images; the ratios are derived from them."""

    intersection: int = 0
    pred_pixels: int = 0
    true_pixels: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: SegScores) -> SegScores:
        return SegScores(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True)))

    @property
    def dice(self) -> float:
        total = self.pred_pixels + self.true_pixels
        return 2 * self.intersection / total if total else 1.0

    @property
    def iou(self) -> float:
        union = self.pred_pixels + self.true_pixels - self.intersection
        return self.intersection / union if union else 1.0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else 1.0

    def summary(self) -> dict[str, float | int]:
        return {"dice": round(self.dice, 4), "iou": round(self.iou, 4), "object_f1": round(self.f1, 4),
                "object_precision": round(self.precision, 4), "object_recall": round(self.recall, 4),
                "tp": self.tp, "fp": self.fp, "fn": self.fn}


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU between every true instance (rows, labels 1..T) and predicted instance (columns, 1..P)."""
    n_t, n_p = int(true.max()), int(pred.max())
    pairs = np.bincount(true.ravel().astype(np.int64) * (n_p + 1) + pred.ravel(),
                        minlength=(n_t + 1) * (n_p + 1)).reshape(n_t + 1, n_p + 1)
    inter = pairs[1:, 1:].astype(np.float64)
    area_t, area_p = pairs[1:, :].sum(1), pairs[:, 1:].sum(0)
    union = area_t[:, None] + area_p[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def score(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> SegScores:
    """Pixel overlap of the foregrounds and one-to-one instance matches (IoU ≥ threshold) of one image."""
    true, pred = _consecutive(true), _consecutive(pred)
    t, p = true > 0, pred > 0
    ious = iou_matrix(true, pred)
    tp = 0
    if ious.size:
        rows, cols = linear_sum_assignment(-ious)
        tp = int((ious[rows, cols] >= iou_threshold).sum())
    return SegScores(int((t & p).sum()), int(p.sum()), int(t.sum()), tp, int(pred.max()) - tp, int(true.max()) - tp)


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..N (a crop of a labelled image keeps only some ids)."""
    ids, inverse = np.unique(labels, return_inverse=True)
    return (inverse.reshape(labels.shape) + (0 if ids[0] == 0 else 1)).astype(np.int64)


def total(scores: Iterable[SegScores]) -> SegScores:
    """Pooled counts (pixels and objects) over images."""
    out = SegScores()
    for s in scores:
        out = out + s
    return out
