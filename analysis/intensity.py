"""Stage 4: a measured fluorescence index and its class (negative / intermediate / positive).

Index = (median over interphase cells of each cell's 90th-percentile signal − background) in grey levels of
8-bit full scale (signal × 255, so 8- and 16-bit images share one scale), × ``reference_exposure_ms /
exposure_ms`` when the sidecar gives an exposure. The 90th percentile rather than the mean, because punctate
patterns (centromere, dots, nucleolar) stain a small part of the nucleus and their mean is mostly dark
nucleoplasm. Background = median signal away from all cells and annotations. Without cells (a blank or
truly negative well often segments to nothing) the field's 99th percentile stands in for the cells.

The cut-offs are a property of the microscope, camera, kit and dilution: a lab calibrates them on its own
negative and positive controls (docs/pipeline.md, "Calibrating the intensity cut-offs").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field, model_validator

from analysis import stats
from analysis.cells import Cell, background_level
from analysis.types import FieldImage


class IntensityConfig(BaseModel):
    """Cut-offs on the index (8-bit grey levels above background at the reference exposure)."""

    negative_below: float = Field(10.0, ge=0, description="Index below this: negative.")
    positive_from: float = Field(25.0, ge=0, description="Index from this on: positive; between: intermediate.")
    reference_exposure_ms: float = Field(100.0, gt=0, description="Exposure the cut-offs refer to.")
    cell_percentile: float = Field(90.0, gt=0, le=100, description="Per-cell statistic (percentile of signal).")
    min_cells: int = Field(5, ge=1, description="Fewer interphase cells: fall back to the field's 99th pct.")

    @model_validator(mode="after")
    def _ordered(self) -> IntensityConfig:
        if self.positive_from < self.negative_below:
            raise ValueError("positive_from must be ≥ negative_below")
        return self


@dataclass
class IntensityResult:
    index: float
    """Fluorescence index (see module docstring)."""
    intensity_class: str
    """One of ``hep2.vocabulary.INTENSITY_CLASSES``."""
    background: float
    """Background level, 8-bit grey levels."""
    noise: float
    """Robust background sigma, 8-bit grey levels."""
    snr: float
    """(cell signal − background) / noise, before exposure normalisation."""
    cells_used: int
    exposure_ms: float | None
    basis: str
    """"cells" or "field_p99" (no cells to measure)."""


def classify_index(index: float, config: IntensityConfig | None = None) -> str:
    cfg = config or IntensityConfig()
    if index < cfg.negative_below:
        return "negative"
    return "positive" if index >= cfg.positive_from else "intermediate"


def exposure_from(sidecar: dict | None) -> float | None:
    """``exposure_ms`` (or ``exposure`` in ms) of a sidecar, if it is a positive number."""
    if not sidecar:
        return None
    for key in ("exposure_ms", "exposure"):
        value = sidecar.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def measure_intensity(field: FieldImage, labels: np.ndarray, cells: list[Cell], sidecar: dict | None = None,
                      config: IntensityConfig | None = None,
                      background: tuple[float, float] | None = None) -> IntensityResult:
    """The index and class of one field from its cells (see module docstring); ``background``: the field's
    :func:`background_level` when the caller has it (computed if not)."""
    cfg = config or IntensityConfig()
    bg, sigma = background or background_level(field, labels)
    used = [c for c in cells if c.excluded is None and not c.mitotic]
    if len(used) >= cfg.min_cells:
        sl_values = []
        for c in used:
            y0, x0, y1, x1 = c.bbox
            vals = field.signal[y0:y1, x0:x1][labels[y0:y1, x0:x1] == c.label]
            sl_values.append(stats.sorted_percentile(vals, np.sort(vals), cfg.cell_percentile))  # = np.percentile
        signal, basis = float(np.median(sl_values)), "cells"
    else:
        free = field.signal[~field.annotation_mask] if (~field.annotation_mask).any() else field.signal.ravel()
        signal, basis = float(stats.percentile(free, 99)), "field_p99"  # = np.percentile
    raw = max(signal - bg, 0.0) * 255.0
    exposure = exposure_from(sidecar)
    index = raw * (cfg.reference_exposure_ms / exposure) if exposure else raw
    noise = max(sigma * 255.0, 0.29)  # floor: the quantisation noise of 8-bit data (1/sqrt(12))
    return IntensityResult(index=round(index, 3), intensity_class=classify_index(index, cfg),
                           background=round(bg * 255.0, 3), noise=round(noise, 3),
                           snr=round(raw / noise, 3),
                           cells_used=len(used) if basis == "cells" else 0, exposure_ms=exposure, basis=basis)
