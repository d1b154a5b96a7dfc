"""The U-Net nucleus segmenter: a segmentation-models-pytorch U-Net (timm encoder, 1 input channel,
trained from scratch by ``training/segmentation``) predicting two maps at a working resolution (``scale`` ×
the input, by default chosen per image so that the typical nucleus is ~28 px across,
:func:`analysis.segmentation.estimate_scale`): foreground probability and the normalised distance to the
nucleus edge. Instances are the watershed of the predicted distance from markers where it exceeds
``marker_threshold``. Large images are tiled with overlap.

Checkpoints use the one format of :mod:`analysis.models.checkpoint` (family ``segmenter``).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch
from scipy import ndimage

from analysis.device import resolve_device
from analysis.models import DEFAULT_SEGMENTER, checkpoint
from analysis.segmentation import estimate_scale, labels_from_maps, normalize, tiles
from analysis.types import FieldImage

FAMILY = "segmenter"

# The architecture shipped by default; the weights file's metadata overrides it.
DEFAULT_CONFIG: dict[str, Any] = {
    "arch": "Unet",
    "encoder": "tu-lcnet_075",
    "decoder_channels": [64, 32, 16, 16, 8],
    "classes": 2,  # 0: foreground logit, 1: normalised distance-to-edge logit
    "scale": 0.5,  # working resolution relative to the input field when it cannot be estimated
    "nucleus_px": 28.0,  # typical nucleus diameter at working resolution (auto scale aims at it)
    "norm_lo": 0.5,  # percentiles for the input stretch (whole image)
    "norm_hi": 99.8,
    "norm_floor": 0.02,  # minimum stretch range, in full-scale units: a blank well is not stretched into noise
}


def build_model(config: dict[str, Any] | None = None) -> torch.nn.Module:
    """The smp model of ``config`` (default :data:`DEFAULT_CONFIG`), random init (no download)."""
    cfg = {**DEFAULT_CONFIG, **(config or {})}
    arch = getattr(smp, cfg["arch"])
    return arch(encoder_name=cfg["encoder"], encoder_weights=None, in_channels=1, classes=int(cfg["classes"]),
                decoder_channels=tuple(cfg["decoder_channels"]))


def save_weights(model: torch.nn.Module, path: str | Path, config: dict[str, Any], half: bool = True) -> Path:
    """The one checkpoint format (fp16 by default) with the full architecture config in the metadata."""
    return checkpoint.save(model, path, FAMILY, {**DEFAULT_CONFIG, **config}, half=half)


def load_model(path: str | Path, device: Any = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """(model in eval mode on ``device``, config) from a checkpoint written by :func:`save_weights`."""
    state, stored = checkpoint.read(path, FAMILY)
    config = {**DEFAULT_CONFIG, **stored}
    return checkpoint.load_into(build_model(config), state, device), config


@dataclass
class UnetSegmenter:
    """U-Net foreground + distance prediction, watershed instance split (see the module docstring)."""

    weights: str | Path | None = None
    device: str = "auto"
    scale: float | str = "auto"  # working resolution: a factor, or "auto" (see estimate_scale)
    tile: int = 512  # tile side at working resolution
    overlap: int = 64
    fg_threshold: float = 0.5
    marker_threshold: float = 0.5
    min_area: int = 40  # pixels of the input
    name: str = "unet"
    last_scale: float | None = field(default=None, init=False)  # the working scale of the last call
    _model: Any = field(default=None, init=False, repr=False)
    _config: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def _load(self) -> None:
        with self._lock:
            if self._model is None:
                path = Path(self.weights) if self.weights else DEFAULT_SEGMENTER
                if not path.exists():
                    raise FileNotFoundError(f"segmenter weights not found: {path}")
                self._device = resolve_device(self.device)
                self._model, self._config = load_model(path, self._device)

    def predict(self, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(foreground probability, normalised distance), float32 maps at the input's resolution."""
        self._load()
        cfg = self._config
        scale = (estimate_scale(signal, cfg["nucleus_px"], default=cfg["scale"]) if self.scale == "auto"
                 else float(self.scale))
        self.last_scale = scale
        work = ndimage.zoom(signal, scale, order=1) if scale != 1.0 else signal
        x = normalize(work, cfg["norm_lo"], cfg["norm_hi"], cfg["norm_floor"])
        h, w = x.shape
        big = max(h, w) > self.tile  # tile only when the image exceeds one tile
        ph, pw = (max(h, self.tile), max(w, self.tile)) if big else (h, w)
        ph, pw = int(np.ceil(max(ph, 64) / 32) * 32), int(np.ceil(max(pw, 64) / 32) * 32)
        padded = np.zeros((ph, pw), np.float32)
        padded[:h, :w] = x
        out = np.zeros((2, ph, pw), np.float32)
        weight = np.zeros((ph, pw), np.float32)
        th, tw = (self.tile, self.tile) if big else (ph, pw)
        with torch.inference_mode():
            for y0 in tiles(ph, th, self.overlap):
                for x0 in tiles(pw, tw, self.overlap):
                    patch = torch.from_numpy(padded[None, None, y0:y0 + th, x0:x0 + tw]).to(self._device)
                    pred = torch.sigmoid(self._model(patch))[0].float().cpu().numpy()
                    out[:, y0:y0 + th, x0:x0 + tw] += pred
                    weight[y0:y0 + th, x0:x0 + tw] += 1.0
        out = out[:, :h, :w] / weight[None, :h, :w]
        if scale != 1.0:
            zoom = (signal.shape[0] / h, signal.shape[1] / w)
            out = np.stack([ndimage.zoom(o, zoom, order=1) for o in out])
        return np.clip(out[0], 0, 1), np.clip(out[1], 0, 1)

    def segment(self, field: FieldImage) -> np.ndarray:
        signal = field.filled
        prob, dist = self.predict(signal)
        return labels_from_maps(prob, dist, field.annotation_mask, self.fg_threshold, self.marker_threshold,
                                self.min_area)


def unet_promoted(weights: Path = DEFAULT_SEGMENTER) -> bool:
    """Whether the bundled U-Net is the default: its weights exist and its card does not demote it."""
    if not weights.exists():
        return False
    card = weights.with_suffix(".json")
    try:
        return bool(json.loads(card.read_text()).get("promoted", True)) if card.exists() else True
    except (OSError, ValueError):
        return True
