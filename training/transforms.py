"""Pre-processing (per crop, on the CPU, once) and augmentation (per batch, on tensors, on the device).

A crop becomes a fixed-size ``uint8`` array ``(C, S, S)``: channel 0 is the percentile-stretched image
(1st/99th quantiles as in seed 001), resized with its aspect ratio kept and zero-padded to a square;
channel 1 (optional, seed 004) is the cell mask (0/255). Augmentation works on whole batches of those
tensors: dihedral flips/rotations, small-angle rotations and intensity/contrast jitter on channel 0, and
optionally (``field_aug``) what differs when cells are cut out of whole-field photographs by our own
segmenter instead of the contest's curated crops: a crop margin that varies (zoom), optics and
magnification (blur), camera noise, and a mask a pixel or two off.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


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


def random_dihedral(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply an independent random D4 element to every sample of a batch ``(N, C, H, W)``."""
    ks = torch.randint(0, 8, (x.shape[0],), generator=generator, device="cpu")
    out = torch.empty_like(x)
    for k in range(8):
        idx = (ks == k).nonzero().flatten().to(x.device)
        if idx.numel():
            out[idx] = dihedral(x[idx], k)
    return out


def rotate(x: torch.Tensor, degrees: torch.Tensor, mask_channel: bool, zoom: torch.Tensor | None = None,
           ) -> torch.Tensor:
    """Rotate each float sample by its angle and magnify it by ``zoom`` (bilinear; mask re-thresholded)."""
    theta = degrees.to(x.device, torch.float32) * (math.pi / 180.0)
    inv = 1.0 / zoom.to(x.device, torch.float32) if zoom is not None else torch.ones_like(theta)
    cos, sin = torch.cos(theta) * inv, torch.sin(theta) * inv
    zero = torch.zeros_like(cos)
    mat = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(mat, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if mask_channel and x.shape[1] > 1:
        out[:, 1:] = (out[:, 1:] >= 0.5).to(out.dtype)
    return out


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Blur each sample of ``(N, H, W)`` with its own Gaussian ``sigma`` (px; 0 leaves it unchanged)."""
    n = x.shape[0]
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.device, x.dtype).clamp_min(1e-3)[:, None]
    kernel = torch.exp(-offsets[None] ** 2 / (2 * s ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    y = F.conv2d(F.pad(x[None], (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=n)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=n)
    return y[0]


def jitter_mask(mask: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Grow (``step`` = +1) or shrink (-1) each binary mask of ``(N, H, W)`` by one pixel; 0 keeps it."""
    grown = F.max_pool2d(mask[:, None], 3, stride=1, padding=1)[:, 0]
    shrunk = -F.max_pool2d(-mask[:, None], 3, stride=1, padding=1)[:, 0]
    step = step.to(mask.device)[:, None, None]
    return torch.where(step > 0, grown, torch.where(step < 0, shrunk, mask))


def augment(x: torch.Tensor, mask_channel: bool, max_angle: float = 18.0, jitter: float = 0.2,
            generator: torch.Generator | None = None, field_aug: float = 0.0) -> torch.Tensor:
    """Training augmentation of a ``uint8`` batch on its device → float batch.

    Random D4 element, a small rotation uniform in ±``max_angle`` degrees (seed 001 rotates in 18° steps;
    together with D4 this covers all angles), and on channel 0 a random gain, gamma and offset of about
    ±``jitter``. With ``field_aug`` = p > 0, each sample independently with probability p also gets: a zoom
    of ×U(0.8, 1.2) (crop margin), a Gaussian blur of σ ~ U(0, 1) px (optics, magnification), a mask grown
    or shrunk by 1 px (segmentation error) and Gaussian noise of σ ~ U(0, 0.06) (camera).
    """
    n = x.shape[0]
    y = to_float(random_dihedral(x, generator))

    def draw(low: float, high: float) -> torch.Tensor:  # per sample, zero where field_aug does not apply
        on = torch.rand(n, generator=generator) < field_aug
        return torch.where(on, low + torch.rand(n, generator=generator) * (high - low), torch.zeros(n))

    zoom = 1.0 + draw(-0.2, 0.2) if field_aug > 0 else None
    if max_angle > 0 or zoom is not None:
        angles = (torch.rand(n, generator=generator) * 2 - 1) * max_angle
        y = rotate(y, angles, mask_channel, zoom)
    if field_aug > 0:
        y[:, 0] = gaussian_blur(y[:, 0], draw(0.0, 1.0))
        if mask_channel and y.shape[1] > 1:
            y[:, 1] = jitter_mask(y[:, 1], torch.sign(draw(-1.0, 1.0)))
    if jitter > 0:
        def gain_draw() -> torch.Tensor:
            return ((torch.rand(n, 1, 1, generator=generator) * 2 - 1) * jitter).to(y.device)
        gain, gamma, offset = 1 + gain_draw(), torch.exp(gain_draw()), gain_draw() * 0.25
        y[:, 0] = (y[:, 0].clamp_min(0).pow(gamma) * gain + offset).clamp(0, 1)
    if field_aug > 0:
        noise = torch.randn(y[:, 0].shape, generator=generator) * draw(0.0, 0.06)[:, None, None]
        y[:, 0] = (y[:, 0] + noise.to(y.device)).clamp(0, 1)
    return y
