"""Training augmentation (per batch, on tensors, on the device) of crops pre-processed by
:func:`analysis.preprocess.prepare_crop`.

Augmentation works on whole batches of those tensors: dihedral flips/rotations, small-angle rotations
and intensity/contrast jitter on channel 0, and optionally (``field_aug``) what differs when cells are cut
out of whole-field photographs by our own segmenter instead of the contest's curated crops: a crop margin
that varies (zoom), optics and magnification (blur), camera noise, and a mask a pixel or two off.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from analysis.preprocess import dihedral, to_float


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
