"""Model families of the analysis core, each with create / save / load through one checkpoint format
(:mod:`.checkpoint`), and the weights bundled with the code (:data:`WEIGHTS_DIR`).

* :mod:`.classifier`: timm cell-pattern classifiers (from scratch);
* :mod:`.unet`: the segmentation-models-pytorch U-Net nucleus segmenter;
* :mod:`.inference`: batched prediction with test-time augmentation, the workers' :class:`CellClassifier`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
"""Weights shipped with the code, each with its model card (``<name>.json``) beside it."""
DEFAULT_CELL_MODEL = WEIGHTS_DIR / "cells-default.safetensors"
DEFAULT_SEGMENTER = WEIGHTS_DIR / "segmenter-default.safetensors"


@dataclass(frozen=True)
class ModelWeights:
    """Weights files chosen for one slide (None: the bundled default of that task)."""

    cell_pattern: Path | None = None
    segmentation: Path | None = None
