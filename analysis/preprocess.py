"""Cell-crop pre-processing shared by training and inference (once per crop, on the CPU) and the dihedral
views of test-time augmentation.

A crop becomes a fixed-size ``uint8`` array ``(C, S, S)``: channel 0 is the percentile-stretched image
(1st/99th quantiles as in seed 001), resized with its aspect ratio kept and zero-padded to a square;
channel 1 (optional, seed 004) is the cell mask (0/255).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from analysis import stats


def to_gray(image: np.ndarray) -> np.ndarray:
    """A 2-D float32 image from gray, RGB(A) or 16-bit input (colour: brightest channel; FITC is green)."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].max(axis=-1)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D or HxWxC image, got shape {np.shape(image)}")
    return img.astype(np.float32)


def percentile_stretch(image: np.ndarray, lo: float = 1.0, hi: float = 99.0) -> np.ndarray:
    """Map the ``lo``/``hi`` percentiles to 0/1 and clip; a flat image becomes all zeros."""
    img = to_gray(image)
    raw = np.asarray(image)
    if raw.dtype == np.uint8 and raw.ndim in (2, 3):  # from a 256-bin histogram: np.percentile's values
        p_lo, p_hi = stats.uint8_percentile(raw if raw.ndim == 2 else raw[..., :3].max(axis=-1), [lo, hi])
    else:
        p_lo, p_hi = np.percentile(img, [lo, hi])
    if p_hi <= p_lo:
        return np.zeros_like(img)
    return np.clip((img - p_lo) / (p_hi - p_lo), 0.0, 1.0)


def fit_square(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Resize so the longer side is ``size`` (aspect ratio kept) and zero-pad (centred) to a square."""
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    resized = np.asarray(Image.fromarray(img, mode="F").resize((nw, nh), resample), dtype=np.float32)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


def prepare_crop(image: np.ndarray, mask: np.ndarray | None, size: int, use_mask: bool) -> np.ndarray:
    """One cell crop → ``uint8`` array ``(1 or 2, size, size)`` ready to stack into a batch.

    Without a mask but with ``use_mask`` the whole crop counts as the cell (all-ones channel).
    """
    img = fit_square(percentile_stretch(image), size)
    channels = [np.round(img * 255.0)]
    if use_mask:
        shape = to_gray(image).shape
        m = np.ones(shape, dtype=np.float32) if mask is None else np.asarray(mask)
        if m.ndim == 3:
            m = m.max(axis=-1)
        if m.shape != shape:
            raise ValueError(f"mask shape {m.shape} differs from image shape {shape}")
        channels.append(fit_square((m > 0).astype(np.float32), size, nearest=True) * 255.0)
    return np.stack(channels).clip(0, 255).astype(np.uint8)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` batch → float in [0, 1] (the model's input scale)."""
    return x.float().div_(255.0)


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th (0..7) element of the dihedral group D4 on the last two axes; ``k=0`` is identity."""
    if not 0 <= k < 8:
        raise ValueError("k must be in 0..7")
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if k >= 4 else y
