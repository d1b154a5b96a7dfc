"""Types shared by the pipeline stages."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

import numpy as np

from analysis import stats


class InvalidImageError(ValueError):
    """The input cannot be analysed (corrupt, truncated, empty, too large, wrong format, ...).

    The message is a readable reason, stored on the job as is; such input is rejected, never retried.
    """


@dataclass(frozen=True)
class FieldImage:
    """A decoded slide-well image, reduced to its fluorescence signal."""

    signal: np.ndarray
    """float32 (H, W): fluorescence in [0, 1] of the format's full scale (255 for 8-bit, 65535 for 16-bit)."""
    bit_depth: int
    """8 or 16: bits per sample of the source."""
    source_format: str
    """"PNG", "TIFF" or "JPEG"."""
    channel_rule: str
    """How the signal was obtained, e.g. "green (FITC) channel of RGB", "grayscale", "page 1 of 3"."""
    annotation_mask: np.ndarray
    """bool (H, W): burned-in scale bars and text; never part of a cell."""

    @property
    def shape(self) -> tuple[int, int]:
        return self.signal.shape  # type: ignore[return-value]

    @cached_property
    def filled(self) -> np.ndarray:
        """``signal`` with the annotation pixels replaced by the median of the others (the background), as
        the quality gate and the segmenter use it; computed once per field (read-only: do not modify)."""
        mask = self.annotation_mask
        if not mask.any():
            return self.signal
        out = self.signal.copy()
        out[mask] = stats.median(self.signal[~mask]) if (~mask).any() else 0.0  # = np.median
        out.setflags(write=False)
        return out

    @cached_property
    def grey_levels(self) -> np.ndarray:
        """``filled`` in float32 grey levels (× 255), as the quality gate measures it; computed once per field
        (read-only). (float64 until session 7: the gate's reports and counts are the same on every AGH and
        uobcs-edges field, in half the memory traffic.)"""
        out = self.filled * np.float32(255.0)
        out.setflags(write=False)
        return out


class Segmenter(Protocol):
    """Nucleus instance segmentation: ``int32 (H, W)`` labels, 0 = background, 1..N = cells."""

    name: str

    def segment(self, field: FieldImage) -> np.ndarray: ...
