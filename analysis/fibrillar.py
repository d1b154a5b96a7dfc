"""Fibrillar (line-like) texture of the stained objects: a review cue for cytoplasmic filament patterns.

Cytoskeletal patterns (actin, vimentin, tubulin: ICAP AC-15/16/17) stain fibres across the cytoplasm. The
segmenter then outlines whole cells, so the cytoplasm-ratio rule (signal *around* a nucleus) cannot see them,
and the six-class classifier calls such cells speckled. What does tell them apart is that their bright
structures are lines, whereas nuclear patterns are dots, speckles, nucleoli, a smooth fill or a rim.

:func:`fibrillar_index` measures that per object with the Hessian of the Gaussian-smoothed signal: at every
bright-structure pixel (smallest eigenvalue ``l1 < 0``) of the object's central region the anisotropy
``(|l1| − max(−l2, 0)) / (|l1| + max(−l2, 0))`` (1 on a line or a saddle, 0 on a round dot), averaged with
weight ``|l1|`` so that strong structures count and flat noise does not. Only the central region (distance
to the object's edge ≥ ``core`` × its maximum) is used, so that a nuclear rim does not count as a line.
The threshold is calibrated on I3A cells of nuclear patterns (``hep2 evaluate cytoplasm``), see
docs/pipeline.md.
"""

from __future__ import annotations

import numpy as np

from analysis.cells import Cell
from analysis.segmentation import distance_transform, gaussian_filter32


def fibrillar_index(image: np.ndarray, mask: np.ndarray, sigma: float = 1.5, core: float = 0.4) -> float | None:
    """Weighted line anisotropy (0-1) of the bright structures in the central part of ``mask``; None if the
    object has fewer than 20 such pixels."""
    x = np.asarray(image, np.float32)
    own = np.asarray(mask) > 0
    if own.sum() < 20:
        return None
    hxx = gaussian_filter32(x, sigma, (0, 2))
    hyy = gaussian_filter32(x, sigma, (2, 0))
    hxy = gaussian_filter32(x, sigma, (1, 1))
    half_trace = (hxx + hyy) / 2
    spread = np.sqrt(np.maximum(half_trace ** 2 - (hxx * hyy - hxy ** 2), 0))
    l1, l2 = half_trace - spread, half_trace + spread  # l1 <= l2
    distance = distance_transform(own)  # = ndimage.distance_transform_edt, faster
    bright = own & (distance >= core * distance.max()) & (l1 < 0)
    if bright.sum() < 20:
        return None
    strong, weak = -l1[bright], np.maximum(-l2[bright], 0)
    anisotropy = (strong - weak) / (strong + weak + 1e-12)
    return float((anisotropy * strong).sum() / strong.sum())


def field_fibrillar_index(signal: np.ndarray, labels: np.ndarray, cells: list[Cell]) -> float | None:
    """Median :func:`fibrillar_index` over the interphase cells of a field; None when none is measurable."""
    values = []
    for c in cells:
        if not c.interphase:
            continue
        y0, x0, y1, x1 = c.bbox
        value = fibrillar_index(signal[y0:y1, x0:x1], labels[y0:y1, x0:x1] == c.label)
        if value is not None:
            values.append(value)
    return float(np.median(values)) if values else None
