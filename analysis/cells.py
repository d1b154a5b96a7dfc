"""Stage 3: cut each segmented nucleus out the way the cell classifier was trained, flag mitoses, classify.

Crop rule (measured on the I3A Task-1 training cells): every I3A crop is the cell's bounding box plus a
10-px margin on each side around a ~48-px cell (margin ≈ 0.2 × the box's long side), not squared, with the
mask of that one cell. We keep the margin *relative* (``margin`` × long side) so cells imaged at other
magnifications look the same after the classifier's resize. The crop is converted to ``uint8`` linearly
from zero so that its brightest pixel lands on ``crop_max_level`` (52: the median maximum of the I3A crops),
i.e. like a shorter exposure on the I3A camera: same quantisation, no clipping; the classifier's own
1st/99th percentile stretch then sees what it saw in training.

Mitotic flag: **rule-based** (no labelled mitoses to learn from). A cell is mitotic when it is bright
(its *median* signal above background ≥ ``mitotic_brightness`` × the field's median cell: condensed
chromatin is bright throughout, whereas a few bright dots or nucleoli do not move a cell's median) and either a plate
(elongation ≥ ``mitotic_elongation`` at area ≤ ``mitotic_plate_area`` × the median cell: a metaphase plate
seen edge-on) or compact (area ≤ ``mitotic_compact_area`` × the median: condensed chromatin, anaphase /
telophase halves). How it was checked is in docs/pipeline.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Protocol

import numpy as np
from pydantic import BaseModel, Field
from scipy import ndimage

from analysis import stats
from analysis.segmentation import dilate_cross, typical_area
from analysis.types import FieldImage
from hep2.vocabulary import CELL_PATTERNS


class CellConfig(BaseModel):
    """Crop, filter and mitosis rules (defaults documented in docs/pipeline.md)."""

    margin: float = Field(0.2, description="Crop margin per side, as a fraction of the bbox's long side.")
    crop_max_level: int = Field(52, ge=0, le=255,
                                description="uint8 level of a crop's brightest pixel (I3A median max); 0 = native.")
    min_area_px: int = Field(40, description="Instances smaller than this (pixels) are debris.")
    min_area_ratio: float = Field(0.15, description="Smaller than this × the typical instance area: debris.")
    max_area_ratio: float = Field(3.0, description="Larger than this × the typical area: clump, not classified.")
    border_px: int = Field(2, description="Cells whose bbox comes this close to the image edge are skipped.")
    annotation_px: int = Field(4, description="Cells within this distance of a burned-in annotation are skipped.")
    mitotic_brightness: float = Field(1.3, description="Mitotic: median above background ≥ this × median cell.")
    mitotic_elongation: float = Field(1.8, description="Mitotic plate: major/minor axis ratio ≥ this ...")
    mitotic_plate_area: float = Field(1.2, description="... and area ≤ this × the median cell area.")
    mitotic_compact_area: float = Field(0.6, description="Mitotic compact chromatin: area ≤ this × median.")


class Classifier(Protocol):
    """What :func:`classify_cells` needs from ``analysis.models.inference.CellClassifier``."""

    def predict(self, crops: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray: ...


@dataclass
class Cell:
    """One segmented nucleus. ``excluded`` names why it was not classified (None: it was)."""

    label: int
    bbox: tuple[int, int, int, int]
    """(y0, x0, y1, x1), end-exclusive, in field pixels."""
    centroid: tuple[float, float]
    """(y, x)."""
    area: int
    mean_intensity: float
    """Mean signal inside the mask (fraction of full scale)."""
    median_intensity: float
    """Median signal inside the mask (fraction of full scale)."""
    p90_intensity: float
    """90th percentile of the signal inside the mask (fraction of full scale)."""
    elongation: float
    mitotic: bool = False
    excluded: str | None = None
    probabilities: list[float] | None = None
    pattern: str | None = None
    crop_box: tuple[int, int, int, int] | None = dc_field(default=None, repr=False)

    @property
    def interphase(self) -> bool:
        """Classified and not mitotic: the cells a specimen pattern is read from."""
        return self.excluded is None and not self.mitotic and self.probabilities is not None


def background_level(field: FieldImage, labels: np.ndarray, ring_px: int = 6) -> tuple[float, float]:
    """Median and robust sigma (1.4826 × MAD) of the signal away from cells and annotations."""
    near = dilate_cross(labels > 0, ring_px) | field.annotation_mask  # = ndimage.binary_dilation(iterations=)
    values = field.signal[~near]
    if values.size < 100:
        values = field.signal[~field.annotation_mask] if (~field.annotation_mask).any() else field.signal.ravel()
    med = float(stats.median(values))  # = np.median, bit for bit (analysis.stats)
    return med, float(1.4826 * stats.median(np.abs(values - med)))


def _covariance(ys: np.ndarray, xs: np.ndarray) -> np.ndarray | None:
    """``np.cov(np.stack([ys, xs]).astype(np.float64))`` by np.cov's own steps (the same values) without its
    argument handling; None below 3 pixels."""
    n = ys.size
    if n < 3:
        return None
    x = np.empty((2, n), np.float64)
    x[0], x[1] = ys, xs
    x -= x.mean(axis=1)[:, None]
    c = np.dot(x, x.T.conj())
    c *= np.true_divide(1, n - 1)
    return c


def _elongations(covs: list[np.ndarray | None]) -> list[float]:
    """sqrt(major / minor eigenvalue) of each covariance (1.0 for None): one batched ``eigvalsh`` (LAPACK per
    matrix, the same values as one call each)."""
    out = [1.0] * len(covs)
    todo = [i for i, c in enumerate(covs) if c is not None]
    if todo:
        evs = np.linalg.eigvalsh(np.stack([covs[i] for i in todo]))
        for i, ev in zip(todo, evs, strict=True):
            out[i] = float(np.sqrt(max(ev[1], 1e-6) / max(ev[0], 1e-6)))
    return out


def measure_cells(field: FieldImage, labels: np.ndarray, config: CellConfig | None = None,
                  background: float | None = None) -> list[Cell]:
    """One :class:`Cell` per label with bbox, centroid, area, intensities, filters and the mitotic flag.

    ``background``: the field's :func:`background_level` median when the caller has it (computed if not).
    Median and 90th percentile come from one sort per cell (:mod:`analysis.stats`: np.median's and
    np.percentile's values), the elongations from one batched eigen-decomposition."""
    cfg = config or CellConfig()
    if labels.shape != field.shape:
        raise ValueError(f"labels {labels.shape} and field {field.shape} differ in shape")
    h, w = field.shape
    near_annotation = (dilate_cross(field.annotation_mask, cfg.annotation_px)
                       if field.annotation_mask.any() else field.annotation_mask)
    cells: list[Cell] = []
    covs: list[np.ndarray | None] = []
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == index
        ys, xs = np.nonzero(mask)
        values = field.signal[sl][mask]
        ordered = np.sort(values)
        y0, x0, y1, x1 = sl[0].start, sl[1].start, sl[0].stop, sl[1].stop
        cell = Cell(label=index, bbox=(y0, x0, y1, x1),
                    centroid=(float(ys.mean() + y0), float(xs.mean() + x0)), area=int(ys.size),
                    mean_intensity=float(values.mean()),
                    median_intensity=float(stats.sorted_median(values, ordered)),
                    p90_intensity=float(stats.sorted_percentile(values, ordered, 90)),
                    elongation=1.0)
        covs.append(_covariance(ys, xs))
        b = cfg.border_px
        if y0 < b or x0 < b or y1 > h - b or x1 > w - b:
            cell.excluded = "border"
        elif near_annotation[sl][mask].any():
            cell.excluded = "annotation"
        cells.append(cell)
    for cell, elongation in zip(cells, _elongations(covs), strict=True):
        cell.elongation = elongation
    _size_filter(cells, cfg)
    flag_mitotic(cells, background_level(field, labels)[0] if background is None else background, cfg)
    return cells


def _size_filter(cells: list[Cell], cfg: CellConfig) -> None:
    """Debris and clumps, relative to the typical (area-weighted median) instance: many small fragments do
    not make whole nuclei look like clumps."""
    areas = [c.area for c in cells if c.excluded is None and c.area >= cfg.min_area_px]
    if not areas:
        for c in cells:
            c.excluded = c.excluded or "too_small"
        return
    typical = typical_area(areas)
    for c in cells:
        if c.excluded:
            continue
        if c.area < max(cfg.min_area_px, cfg.min_area_ratio * typical):
            c.excluded = "too_small"
        elif c.area > cfg.max_area_ratio * typical:
            c.excluded = "too_large"


def flag_mitotic(cells: list[Cell], background: float, cfg: CellConfig) -> None:
    """Set ``Cell.mitotic`` by the rule in the module docstring (relative to the field's median cell)."""
    kept = [c for c in cells if c.excluded is None]
    if len(kept) < 3:
        return
    median_area = float(np.median([c.area for c in kept]))
    median_signal = float(np.median([c.median_intensity - background for c in kept]))
    if median_signal <= 0:
        return
    for c in kept:
        brightness = (c.median_intensity - background) / median_signal
        plate = c.elongation >= cfg.mitotic_elongation and c.area <= cfg.mitotic_plate_area * median_area
        compact = c.area <= cfg.mitotic_compact_area * median_area
        c.mitotic = bool(brightness >= cfg.mitotic_brightness and (plate or compact))


def crop_cell(field: FieldImage, labels: np.ndarray, cell: Cell, config: CellConfig | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's input for one cell: ``uint8`` image and ``bool`` mask of that instance only."""
    cfg = config or CellConfig()
    y0, x0, y1, x1 = cell.bbox
    m = round(cfg.margin * max(y1 - y0, x1 - x0))
    h, w = field.shape
    box = (max(y0 - m, 0), max(x0 - m, 0), min(y1 + m, h), min(x1 + m, w))
    cell.crop_box = box
    sl = (slice(box[0], box[2]), slice(box[1], box[3]))
    img = field.signal[sl].astype(np.float32)
    mask = labels[sl] == cell.label
    if cfg.crop_max_level:
        top = float(img.max())
        img = img * (cfg.crop_max_level / top) if top > 0 else img
    else:
        img = img * 255.0
    return np.clip(np.round(img), 0, 255).astype(np.uint8), mask


def classify_cells(field: FieldImage, labels: np.ndarray, cells: list[Cell], classifier: Classifier,
                   config: CellConfig | None = None) -> None:
    """Crop every non-excluded cell, classify them in one batched call, store probabilities and pattern."""
    todo = [c for c in cells if c.excluded is None]
    if not todo:
        return
    probs = np.asarray(classifier.predict([crop_cell(field, labels, c, config) for c in todo]), dtype=np.float64)
    if probs.shape != (len(todo), len(CELL_PATTERNS)):
        raise ValueError(f"classifier returned shape {probs.shape}, expected ({len(todo)}, {len(CELL_PATTERNS)})")
    for c, p in zip(todo, probs, strict=True):
        c.probabilities = [float(v) for v in p]
        c.pattern = CELL_PATTERNS[int(p.argmax())].value
