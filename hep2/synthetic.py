"""Synthetic slide-well images for the demo and for tests that must not depend on ../shared/data.

Every image made here is SYNTHETIC: drawn by this code, not photographed. Nuclei are ellipses whose
texture imitates one staining pattern, on a dark, unevenly lit background with blur and shot noise,
written as RGB with the signal in the green (FITC) channel like a fluorescence camera's output.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from scipy import ndimage

from hep2.vocabulary import Pattern

SYNTHETIC_PATTERNS = (Pattern.HOMOGENEOUS, Pattern.SPECKLED, Pattern.NUCLEOLAR, Pattern.CENTROMERE,
                      Pattern.NUCLEAR_MEMBRANE)


def _nucleus_texture(pattern: Pattern, inside: np.ndarray, ring: np.ndarray, rng: np.random.Generator,
                     ) -> np.ndarray:
    h, w = inside.shape
    if pattern is Pattern.HOMOGENEOUS:
        tex = np.full((h, w), 1.0)
    elif pattern is Pattern.SPECKLED:
        tex = 0.45 + 0.8 * ndimage.gaussian_filter(rng.random((h, w)), 1.0) ** 2 * 4
    elif pattern is Pattern.NUCLEOLAR:
        tex = np.full((h, w), 0.2)
        for _ in range(rng.integers(2, 6)):
            y, x = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
            tex[max(y - 3, 0):y + 3, max(x - 3, 0):x + 3] = 1.3
    elif pattern is Pattern.CENTROMERE:
        tex = np.full((h, w), 0.15)
        ys, xs = np.nonzero(inside)
        for i in rng.choice(len(ys), size=min(len(ys), 45), replace=False):
            tex[ys[i], xs[i]] = 6.0
    else:  # nuclear membrane
        tex = 0.25 + 1.2 * ring
    return ndimage.gaussian_filter(tex, 1.0) * inside


def synthetic_field(pattern: Pattern, size: tuple[int, int] = (768, 1024), cells: int = 40,
                    brightness: float = 150.0, seed: int = 0, residual: float = 4.0,
                    noise_scale: float = 1.0) -> np.ndarray:
    """An RGB uint8 field (H, W, 3) of ``cells`` nuclei stained with ``pattern`` (0 brightness: negative).

    ``residual``: grey levels of faint uniform nuclear fluorescence every well shows (a negative well's nuclei
    are faintly visible, as in real negative fields); 0 with ``brightness=0`` gives a field of noise only.
    ``noise_scale``: camera noise (shot + read) relative to the default; real dim fields are quieter (~0.3).
    """
    rng = np.random.default_rng(seed)
    height, width = size
    field = np.zeros(size, dtype=np.float64)
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(cells):
        cy, cx = rng.uniform(30, height - 30), rng.uniform(30, width - 30)
        ry, rx, angle = rng.uniform(14, 24), rng.uniform(14, 24), rng.uniform(0, np.pi)
        y0, y1, x0, x1 = int(cy - 30), int(cy + 30), int(cx - 30), int(cx + 30)
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        r = np.sqrt(u**2 + v**2)
        texture = _nucleus_texture(pattern, r <= 1.0, (r > 0.8) & (r <= 1.0), rng)
        level = texture * rng.uniform(0.7, 1.1) * brightness + (r <= 1.0) * residual
        field[y0:y1, x0:x1] = np.maximum(field[y0:y1, x0:x1], level)
    illumination = 0.75 + 0.25 * np.cos((xx / width - 0.5) * np.pi) * np.cos((yy / height - 0.5) * np.pi)
    signal = ndimage.gaussian_filter(field * illumination, 1.2) + 8.0
    mean = np.clip(signal, 0, None)
    noisy = rng.poisson(mean).astype(np.float64) + rng.normal(0, 2.0, size)
    if noise_scale != 1.0:
        noisy = mean + noise_scale * (noisy - mean)
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[..., 1] = np.clip(noisy, 0, 255).astype(np.uint8)
    rgb[..., 0] = np.clip(noisy * 0.08, 0, 255).astype(np.uint8)  # a little bleed-through, as cameras show
    return rgb


def synthetic_png(pattern: Pattern, seed: int = 0, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_field(pattern, seed=seed, **kwargs)).save(buffer, format="PNG")  # type: ignore[arg-type]
    return buffer.getvalue()
