"""Handcrafted per-cell descriptors of a HEp-2 cell crop: multi-scale rotation-invariant LBP, grey-level
co-occurrence, intensity distribution, radial profile, dot (DoG blob) and bright-spot statistics, gradients,
shape, and optionally co-occurrence of adjacent LBPs, Gabor energies and Golgi-oriented asymmetry cues.

numpy/scipy and OpenCV (resizing for ``cell_size``; exact integer and min/max operations: distance transforms,
3×3 maxima, connected components, lookup tables). Everything is vectorised over a batch: crops are cut
to their mask's bounding box (:func:`crop_to_mask`), grouped by tile side (the long side rounded up to 8 px,
plus the zero margin), centred in that square tile and processed as one ``(N, T, T)`` stack per side (LBP
bits by slicing the flattened stack, Gaussian smoothing by FFT, histograms by one ``np.bincount`` each); a
crop's tile depends only on its own cell, so its descriptors do not depend on the other crops of the call.
Per crop:

0. With ``cell_size`` set, the crop is first resized so the cell's equivalent side is ``cell_size`` pixels
   (:func:`normalise_size`): cells photographed at other magnifications give the same texture scale.
1. The cell (the mask's non-zero pixels; ``None`` = the whole crop) is percentile-stretched: its own
   ``stretch_percentiles`` map to 0/1 (clipped); pixels outside the mask are set to 0.
2. Regions: the *rim* is the band inside the mask edge whose distance to the edge (mean of chessboard and
   taxicab distance) is at most ``rim_fraction`` of the cell's largest inner distance; the *interior* is the
   rest; *whole* is both.
3. LBP: rotation-invariant uniform codes (``riu2``, the ``"uniform"`` method of scikit-image: P+2 bins) with
   the P sample points rounded to the pixel grid (at R=1, P=8 this is Ojala's 3×3 neighbourhood); sets of
   points are closed under 90° rotation, so a rot90 of the crop gives the same histograms. Computed on the
   stretched cell and on Gaussian-smoothed copies (``lbp_sigmas``, a scale space), histograms per region.

The feature vector is a pure function of (crop, mask, spec); :func:`feature_names` lists its columns.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

from analysis import stats

Crop = tuple[np.ndarray, "np.ndarray | None"]
REGIONS = ("whole", "inner", "rim")
VALUES_REVISION = 2
"""Raised whenever a code change moves descriptor values (2: crops cut to their mask's bounding box, session 7);
caches of descriptors (``training.texture.cached_features``) are keyed by it, so stale values are not reused."""


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list | tuple) else value


def _listify(value: Any) -> Any:
    return [_listify(v) for v in value] if isinstance(value, list | tuple) else value


@dataclass(frozen=True)
class DescriptorSpec:
    """Every parameter of the descriptor (the model file stores it: a model is only valid with its spec)."""

    stretch_percentiles: tuple[float, float] = (1.0, 99.0)
    lbp: tuple[tuple[int, int], ...] = ((1, 8), (2, 8), (3, 8), (4, 8), (5, 8))  # (radius, points)
    lbp_sigmas: tuple[float, ...] = (0.0, 1.0)  # Gaussian pre-smoothing of the LBP input; 0 = none
    rim_fraction: float = 0.25
    glcm_levels: int = 16
    glcm_distances: tuple[int, ...] = (1, 2, 4)
    dog_sigmas: tuple[float, ...] = (0.0, 1.0, 1.6, 2.5, 4.0)  # consecutive pairs = difference-of-Gaussian bands
    dot_thresholds: tuple[float, ...] = (0.03, 0.08, 0.15)  # DoG response (stretched units) of a counted dot
    spot_thresholds: tuple[float, ...] = (0.5, 0.75)  # bright spots: smoothed stretched value above this
    radial_bins: int = 8
    coalbp: tuple[tuple[int, int], ...] = ()  # (LBP radius, displacement) of co-occurring adjacent LBPs
    gabor_frequencies: tuple[float, ...] = ()  # cycles per pixel
    gabor_orientations: int = 4
    golgi: bool = False  # asymmetry cues: brightest sector share, bright-centroid eccentricity, ...
    cell_size: float | None = None  # resize each crop so sqrt(mask area) is this many px; None: native scale
    batch_size: int = 64  # cells per vectorised batch (64: the stack stays in cache; 256 was 40% slower)

    def to_dict(self) -> dict[str, Any]:
        return {k: _listify(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DescriptorSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown descriptor parameters: {sorted(unknown)}")
        return cls(**{k: _tuplify(v) for k, v in data.items()})

    @property
    def margin(self) -> int:
        """Zero margin around each crop in its tile: LBP radii, and FFT smoothing wrap-around."""
        radii = [r for r, _ in self.lbp] + [r for r, _ in self.coalbp] + [1]
        sigmas = [*self.lbp_sigmas, *self.dog_sigmas, 1.0]
        return int(max(max(radii) + 1, math.ceil(2.5 * max(sigmas))))


# ----------------------------------------------------------------------------------------------- batching


def _gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].max(axis=-1)
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D or HxWxC image, got shape {np.shape(image)}")
    return img.astype(np.float32, copy=False)


def _cell_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m.max(axis=-1)
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {shape}")
    return m > 0


def normalise_size(crops: Sequence[Crop], cell_size: float) -> list[Crop]:
    """Crops resized so each cell's equivalent side (square root of its mask's area, or of the whole crop
    without a mask) is ``cell_size`` pixels: the same cell at another magnification gives the same texture
    scale. Image: area interpolation when shrinking, bilinear when enlarging; mask: nearest neighbour."""
    out: list[Crop] = []
    for image, mask in crops:
        img = np.asarray(image)
        m = None if mask is None else _cell_mask(mask, img.shape[:2])
        area = float(m.sum()) if m is not None and m.any() else float(img.shape[0] * img.shape[1])
        factor = cell_size / math.sqrt(area)
        h, w = img.shape[:2]
        size = (max(1, round(w * factor)), max(1, round(h * factor)))  # OpenCV: (width, height)
        if size == (w, h):
            out.append((img, m))
            continue
        interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(img.astype(np.float32), size, interpolation=interp)
        out.append((resized, None if m is None else
                    cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)))
    return out


def _stack(crops: Sequence[Crop], spec: DescriptorSpec) -> tuple[np.ndarray, np.ndarray]:
    """Stretched cells and masks centred in ``(N, T, T)`` tiles with a zero margin."""
    grays = [_gray(img) for img, _ in crops]
    masks = [_cell_mask(m, g.shape) for g, (_, m) in zip(grays, crops, strict=True)]
    side = max(max(g.shape) for g in grays)
    side = -(-side // 8) * 8
    tile = side + 2 * spec.margin
    n = len(crops)
    s = np.zeros((n, tile, tile), np.float32)
    mk = np.zeros((n, tile, tile), bool)
    lo_p, hi_p = spec.stretch_percentiles
    for i, (g, m, (img, _)) in enumerate(zip(grays, masks, crops, strict=True)):
        if not m.any():  # empty mask: treat the whole crop as the cell
            m = np.ones_like(m)
        raw = np.asarray(img)
        if raw.dtype == np.uint8 and raw.shape == g.shape:  # np.percentile's values, from a histogram
            lo, hi = stats.uint8_percentile(raw[m], [lo_p, hi_p])
        else:
            vals = g[m]
            lo, hi = stats.sorted_percentile(vals, np.sort(vals), [lo_p, hi_p])
        h, w = g.shape
        y0, x0 = (tile - h) // 2, (tile - w) // 2
        if hi > lo:
            s[i, y0:y0 + h, x0:x0 + w] = np.clip((g - lo) / (hi - lo), 0.0, 1.0) * m
        mk[i, y0:y0 + h, x0:x0 + w] = m
    return s, mk


class _Out:
    """Collects named feature blocks in order."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.blocks: list[np.ndarray] = []

    def add(self, names: Sequence[str], values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float32).reshape(len(values), -1)
        if values.shape[1] != len(names):
            raise AssertionError(f"{values.shape[1]} values for {len(names)} names ({names[:3]}...)")
        self.names += list(names)
        self.blocks.append(values)

    def array(self) -> np.ndarray:
        return np.concatenate(self.blocks, axis=1)


# ---------------------------------------------------------------------------------------------- helpers


def _gaussians(s: np.ndarray, sigmas: set[float]) -> dict[float, np.ndarray]:
    """Gaussian-smoothed copies of the stack, by FFT (one forward transform, one inverse per sigma)."""
    out: dict[float, np.ndarray] = {0.0: s}
    wanted = sorted(x for x in sigmas if x > 0)
    if not wanted:
        return out
    t = s.shape[-1]
    spec = sfft.rfft2(s, axes=(1, 2), workers=1)
    fy = sfft.fftfreq(t)[:, None]
    fx = sfft.rfftfreq(t)[None, :]
    f2 = (fy ** 2 + fx ** 2).astype(np.float32)
    for sigma in wanted:
        transfer = np.exp(-2.0 * (math.pi * sigma) ** 2 * f2)
        out[sigma] = sfft.irfft2(spec * transfer, s=(t, t), axes=(1, 2), workers=1).astype(np.float32, copy=False)
    return out


@lru_cache(maxsize=8)
def _riu2_table(points: int) -> np.ndarray:
    """riu2 code of every P-bit neighbour pattern (bit k = sample point k >= centre): the number of ones when
    the circular pattern has at most 2 transitions (uniform), else P+1."""
    codes = np.arange(1 << points, dtype=np.int64)
    bits = (codes[:, None] >> np.arange(points)) & 1
    trans = (bits != np.roll(bits, 1, axis=1)).sum(1)
    return np.where(trans <= 2, bits.sum(1), points + 1).astype(np.uint8)


@lru_cache(maxsize=64)
def _lbp_names(sigma: float, radius: int, points: int) -> tuple[str, ...]:
    """Column names of one LBP histogram block (whole, inner, rim × P+2 bins), built once per configuration."""
    return tuple(f"lbp_s{sigma:g}_r{radius}p{points}_{reg}_{b}" for reg in REGIONS for b in range(points + 2))


def _lbp_riu2(q: np.ndarray, radius: int, points: int, m: int) -> np.ndarray:
    """Rotation-invariant uniform LBP codes (0..P+1) on the grid ``[m:-m, m:-m]`` of each tile (a view of
    :func:`_lbp_riu2_full`; the same codes as :func:`_lbp_riu2_counting`)."""
    t = q.shape[-1]
    return _lbp_riu2_full(q, radius, points, m)[:, m:t - m, m:t - m]


def _lbp_riu2_full(q: np.ndarray, radius: int, points: int, m: int) -> np.ndarray:
    """:func:`_lbp_riu2`'s codes in ``(N, T, T)`` tiles: valid on each tile's grid ``[m:-m, m:-m]`` (elsewhere
    undefined): :func:`_lbp_packed` mapped by :func:`_riu2_table`."""
    if points > 16 or m <= radius:
        t = q.shape[-1]
        out = np.zeros(q.shape, np.uint8)
        out[:, m:t - m, m:t - m] = _lbp_riu2_counting(q, radius, points, m)
        return out
    packed = _lbp_packed(q, radius, points, m)
    table = _riu2_table(points)
    return (cv2.LUT(packed, table) if points <= 8 else table[packed]).reshape(q.shape)


def _lbp_riu2_at(q: np.ndarray, radius: int, points: int, m: int, flat_idx: np.ndarray) -> np.ndarray:
    """``_lbp_riu2_full(q, radius, points, m).ravel()[flat_idx]`` (pixels on their tiles' grids), looked up
    only at those pixels."""
    if points > 16 or m <= radius:
        return _lbp_riu2_full(q, radius, points, m).ravel()[flat_idx]
    packed = _lbp_packed(q, radius, points, m)[flat_idx]
    table = _riu2_table(points)
    return cv2.LUT(packed, table).reshape(-1) if points <= 8 else table[packed]


def _lbp_packed(q: np.ndarray, radius: int, points: int, m: int) -> np.ndarray:
    """The P comparison bits (bit k: sample point k >= centre) packed into one integer per pixel of the
    flattened ``(N, T, T)`` stack (``points`` <= 16, ``m`` > ``radius``): valid on each tile's grid
    ``[m:-m, m:-m]``, 0 elsewhere. A neighbour at (dy, dx) is at flat offset dy·T + dx (the margin keeps
    every grid pixel's neighbours inside its own tile), so every pass is contiguous."""
    n, t, _ = q.shape
    flat = np.ascontiguousarray(q).reshape(-1)
    lo, hi = m * t + m, (n - 1) * t * t + (t - m - 1) * t + (t - m)  # first and past-the-last grid pixel
    centre = flat[lo:hi]
    dtype = np.uint8 if points <= 8 else np.uint16
    out = np.empty(n * t * t, dtype)
    out[:lo], out[hi:] = 0, 0
    packed = out[lo:hi]
    bit = np.empty(hi - lo, bool)
    weighted = np.empty(hi - lo, dtype)
    for k, off in enumerate(_lbp_offsets(radius, points, t)):
        if k == 0 and dtype == np.uint8:  # bit 0: the comparison itself (0/1), written in place
            np.greater_equal(flat[lo + off:hi + off], centre, out=packed.view(bool))
            continue
        if k == 0:
            packed[:] = 0
        np.greater_equal(flat[lo + off:hi + off], centre, out=bit)
        # bit << k as a multiplication (numpy's shift of small integers is not vectorised)
        np.multiply(bit.view(np.uint8), dtype(1 << k), out=weighted, dtype=dtype)
        np.bitwise_or(packed, weighted, out=packed)
    return out


@lru_cache(maxsize=256)
def _lbp_offsets(radius: int, points: int, t: int) -> tuple[int, ...]:
    """Flat offsets (dy·T + dx) of the P sample points of radius ``radius`` in ``T``-wide tiles."""
    out = []
    for k in range(points):
        a = 2.0 * math.pi * k / points
        out.append(round(-radius * math.sin(a)) * t + round(radius * math.cos(a)))
    return tuple(out)


def _lbp_riu2_counting(q: np.ndarray, radius: int, points: int, m: int) -> np.ndarray:
    """Rotation-invariant uniform LBP codes by counting ones and circular transitions (the reference)."""
    t = q.shape[-1]
    centre = q[:, m:t - m, m:t - m]
    ones = np.zeros(centre.shape, np.uint8)
    trans = np.zeros(centre.shape, np.uint8)
    first = prev = None
    for k in range(points):
        a = 2.0 * math.pi * k / points
        dy, dx = round(-radius * math.sin(a)), round(radius * math.cos(a))
        bit = q[:, m + dy:t - m + dy, m + dx:t - m + dx] >= centre
        ones += bit
        if prev is None:
            first = bit
        else:
            trans += bit ^ prev
        prev = bit
    trans += prev ^ first
    return np.where(trans <= 2, ones, np.uint8(points + 1))


def _region_hist(codes_in: np.ndarray, nbins: int, key_base: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(N, 3, nbins) normalised histograms (whole, inner, rim) of the in-mask pixels' codes."""
    n = counts.shape[0]
    h = np.bincount(key_base + codes_in, minlength=n * 2 * nbins).reshape(n, 2, nbins)
    h = np.concatenate([h.sum(1, keepdims=True), h], axis=1).astype(np.float32)
    return h / np.maximum(counts[:, :, None], 1)


def _cooc_keys(codes: np.ndarray, nbins: int) -> np.ndarray:
    """Each pixel's first-member key for :func:`_cooc`: its cell and code (``cell * nbins² + code * nbins``)."""
    n = codes.shape[0]
    kind = np.int32 if n * nbins * nbins < 2 ** 31 else np.int64
    keyed = codes.astype(kind) * nbins
    keyed += (np.arange(n, dtype=kind) * (nbins * nbins))[:, None, None]
    return keyed


def _cooc(codes: np.ndarray, nbins: int, m: np.ndarray, d: int, keyed: np.ndarray | None = None) -> np.ndarray:
    """(N, nbins, nbins) symmetric co-occurrence counts of codes at horizontal and vertical distance ``d``
    (both pixels in the mask); invariant to 90° rotations. Each pixel's key (its cell and code,
    :func:`_cooc_keys`; pass it to reuse it across distances) is formed once on the whole stack; the pairs'
    keys are then one addition and one gather (integer counts)."""
    n = codes.shape[0]
    if keyed is None:
        keyed = _cooc_keys(codes, nbins)
    total = np.zeros(n * nbins * nbins, np.float64)
    for a, b, va, vb in ((keyed[:, :, :-d], codes[:, :, d:], m[:, :, :-d], m[:, :, d:]),
                         (keyed[:, :-d, :], codes[:, d:, :], m[:, :-d, :], m[:, d:, :])):
        total += np.bincount((a + b)[va & vb], minlength=n * nbins * nbins)
    c = total.reshape(n, nbins, nbins)
    return c + c.transpose(0, 2, 1)


def _max3(r: np.ndarray) -> np.ndarray:
    """3×3 maximum filter of each tile (edges: the valid part): one OpenCV dilation of the tiles stacked with
    a row of -inf between them (exact: a maximum; replicated borders add no new values)."""
    if r.dtype != np.float32 or r.ndim != 3 or min(r.shape[1:]) < 2:
        return _max3_slices(r)
    n, h, w = r.shape
    padded = np.full((n, h + 1, w), -np.inf, np.float32)
    padded[:, :h] = r
    out = cv2.dilate(padded.reshape(n * (h + 1), w), _SQUARE3, borderType=cv2.BORDER_REPLICATE)
    return out.reshape(n, h + 1, w)[:, :h]


_SQUARE3 = np.ones((3, 3), np.uint8)


def _max3_slices(r: np.ndarray) -> np.ndarray:
    """3×3 maximum filter of each tile by shifted maxima (the reference)."""
    row = r.copy()
    row[:, :, 1:] = np.maximum(row[:, :, 1:], r[:, :, :-1])
    row[:, :, :-1] = np.maximum(row[:, :, :-1], r[:, :, 1:])
    out = row.copy()
    out[:, 1:] = np.maximum(out[:, 1:], row[:, :-1])
    out[:, :-1] = np.maximum(out[:, :-1], row[:, 1:])
    return out


def _cdt(mask: np.ndarray, metric: str) -> np.ndarray:
    """``scipy.ndimage.distance_transform_cdt(mask, metric)`` (int32) by OpenCV's 3×3 distance transform,
    which is exact for these two metrics (integer distances; outside the array is not background in either)."""
    if mask.ndim != 2 or min(mask.shape) < 1:
        return ndi.distance_transform_cdt(mask, metric)
    kind = {"chessboard": cv2.DIST_C, "taxicab": cv2.DIST_L1}[metric]
    src = np.ascontiguousarray(mask, dtype=np.uint8)
    if not src.all():
        return cv2.distanceTransform(src, kind, 3).astype(np.int32)
    return ndi.distance_transform_cdt(mask, metric)  # no background pixel: scipy's own convention


def _edge_depth(mask: np.ndarray) -> np.ndarray:
    """Mean of the chessboard and taxicab distances to the background (:func:`_cdt`) as float32 (exact: integers
    and halves), from OpenCV's float32 distances directly when the 2-D mask has a background pixel."""
    src = np.ascontiguousarray(mask, dtype=np.uint8)
    if src.ndim != 2 or not src.size or src.all():
        return (_cdt(mask, "chessboard").astype(np.float32) + _cdt(mask, "taxicab").astype(np.float32)) * 0.5
    out = cv2.distanceTransform(src, cv2.DIST_C, 3)
    out += cv2.distanceTransform(src, cv2.DIST_L1, 3)
    out *= 0.5
    return out


def _quantise(x: np.ndarray) -> np.ndarray:
    """``np.round(x * 255.0).clip(0, 255).astype(np.uint8)`` for float32 ``x``, in one buffer."""
    if x.dtype != np.float32:
        return np.round(x * 255.0).clip(0, 255).astype(np.uint8)
    if x.ndim >= 2 and x.size and np.float32(x.min()) * np.float32(255.0) >= -0.5:
        # OpenCV: round-half-even(|255 x|) saturated, in one pass; = clip(round(255 x)) while 255 x >= -0.5
        return cv2.convertScaleAbs(x.reshape(-1, x.shape[-1]), alpha=255.0).reshape(x.shape)
    y = np.multiply(x, 255.0, dtype=np.float32)
    np.round(y, out=y)
    np.clip(y, 0, 255, out=y)
    return y.astype(np.uint8)


def _count(b: np.ndarray) -> np.ndarray:
    """``b.sum((1, 2))`` of a boolean stack (int64; the same integers, faster)."""
    return np.count_nonzero(b.reshape(b.shape[0], -1), axis=1).astype(np.int64, copy=False)


def _cell_sum(cell: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per-cell sums (float64) of the values of the in-mask pixels of cells ``cell``."""
    return np.bincount(cell, values, minlength=n)


def _msum(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.einsum("nij,nij->n", x, m, dtype=np.float64) if x.dtype != bool else _count(x & m)


def _dog_band(r: np.ndarray, m: np.ndarray, mf: np.ndarray, area1: np.ndarray, thresholds: Sequence[float],
              flat_in: np.ndarray, cell_in: np.ndarray) -> np.ndarray:
    """One difference-of-Gaussian band ``r`` (grid): dots per 1000 px above each threshold, the mean peak,
    the positive mean and energy and the absolute mean. The peaks (positive in-mask 3×3 maxima) are few: their
    counts and sum come from their values alone (the same integers; the sum in float64 as before); the energy
    and absolute mean from the in-mask pixels ``flat_in`` (cells ``cell_in``); the positive mean stays a
    float32 sum over the grid, as before."""
    n = r.shape[0]
    peak = r >= _max3(r)
    peak &= m
    peak &= r > 0
    at = np.flatnonzero(peak)
    cell = at // (r.shape[1] * r.shape[2])
    rk = r.ravel()[at]
    cols = [np.bincount(cell[rk > th], minlength=n) / area1 * 1000.0 for th in thresholds]
    npk = np.maximum(np.bincount(cell, minlength=n), 1)
    rp = np.maximum(r, 0)
    rp *= mf
    r_in = r.ravel()[flat_in].astype(np.float64)
    pos = np.maximum(r_in, 0.0)
    cols += [np.bincount(cell, rk.astype(np.float64), minlength=n) / npk, rp.sum((1, 2)) / area1,
             _cell_sum(cell_in, pos * pos, n) / area1, _cell_sum(cell_in, np.abs(r_in), n) / area1]
    return np.column_stack(cols)


def _moments(s_in: np.ndarray, cell_in: np.ndarray, area1: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-cell mean, std, skewness and kurtosis of the in-mask values ``s_in`` (float32, cells ``cell_in``
    ascending): float64 sums over the in-mask pixels alone (outside the mask the full-grid sums added zeros)."""
    n = len(area1)
    mean = _cell_sum(cell_in, s_in.astype(np.float64), n) / area1
    dev = (s_in - mean.astype(np.float32)[cell_in]).astype(np.float64)
    dev2 = dev * dev
    var = _cell_sum(cell_in, dev2, n) / area1
    std = np.sqrt(var)
    skew = _cell_sum(cell_in, dev2 * dev, n) / area1 / np.maximum(std, 1e-6) ** 3
    kurt = _cell_sum(cell_in, dev2 * dev * dev, n) / area1 / np.maximum(var, 1e-9) ** 2
    return mean, std, skew, kurt


def _gradients(g1: np.ndarray, flat_in_tile: np.ndarray, region_key: np.ndarray,
               counts: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Mean gradient magnitude of ``g1`` (N, T, T) per cell over whole / inner / rim, and the mean squared
    magnitude: central differences at the in-mask pixels only (flat tile indices; a margin >= 1 keeps their
    neighbours in their own tile). ``region_key``: cell × 2 + (1 rim, 0 inner); ``counts``: (N, 3) pixels."""
    n, t = g1.shape[0], g1.shape[-1]
    g1f = g1.ravel()
    gy = (g1f[flat_in_tile + t] - g1f[flat_in_tile - t]) * 0.5
    gx = (g1f[flat_in_tile + 1] - g1f[flat_in_tile - 1]) * 0.5
    mag = np.hypot(gy, gx).astype(np.float64)
    by_region = np.bincount(region_key, mag, minlength=2 * n).reshape(n, 2)  # inner, rim
    whole = np.bincount(region_key // 2, mag, minlength=n)
    gm = [whole / np.maximum(counts[:, 0], 1), by_region[:, 0] / np.maximum(counts[:, 1], 1),
          by_region[:, 1] / np.maximum(counts[:, 2], 1)]
    return gm, np.bincount(region_key // 2, mag * mag, minlength=n) / np.maximum(counts[:, 0], 1)


def _shape_moments(cell: np.ndarray, y: np.ndarray, x: np.ndarray, area1: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centroid (cy, cx) and second central moments (yy, xx, xy) per cell of the in-mask pixels (their cells
    ``cell`` ascending and grid coordinates ``y``, ``x``), from those pixels alone."""
    n = len(area1)
    y_in, x_in = y.astype(np.float32), x.astype(np.float32)
    cy = _cell_sum(cell, y_in.astype(np.float64), n) / area1
    cx = _cell_sum(cell, x_in.astype(np.float64), n) / area1
    dy = (y_in - cy.astype(np.float32)[cell]).astype(np.float64)
    dx = (x_in - cx.astype(np.float32)[cell]).astype(np.float64)
    return (cy, cx, _cell_sum(cell, dy * dy, n) / area1, _cell_sum(cell, dx * dx, n) / area1,
            _cell_sum(cell, dy * dx, n) / area1)


# ----------------------------------------------------------------------------------------------- features


def _features(s_full: np.ndarray, mk_full: np.ndarray, spec: DescriptorSpec) -> _Out:
    out = _Out()
    n, t, _ = s_full.shape
    mg = spec.margin
    grid = (slice(None), slice(mg, t - mg), slice(mg, t - mg))
    m = mk_full[grid]
    mf = m.astype(np.float32)
    area = _count(m).astype(np.float64)
    area1 = np.maximum(area, 1)

    # regions from the distance to the mask edge (mosaic: tiles are separated by their zero margins)
    mosaic = mk_full.reshape(n * t, t)
    dist = _edge_depth(mosaic)
    dmax = np.maximum(dist.reshape(n, -1).max(1).astype(np.float64), 1.0)  # 0 outside the masks: the grid's max
    flat_in = np.flatnonzero(m)  # the in-mask pixels: cells and grid coordinates (np.nonzero: 10× slower)
    cell_in, rest = np.divmod(flat_in, m.shape[1] * m.shape[2])
    y_in, x_in = np.divmod(rest, m.shape[2])
    flat_in_tile = (cell_in * t + (y_in + mg)) * t + (x_in + mg)  # the same pixels in the (N, T, T) tiles
    rd_in = dist.ravel()[flat_in_tile].astype(np.float64) / dmax[cell_in]  # relative depth of in-mask pixels
    reg_in = (rd_in <= spec.rim_fraction).astype(np.int64)  # 1: rim, 0: inner
    n_rim = np.bincount(cell_in, reg_in, minlength=n)
    counts = np.stack([area, area - n_rim, n_rim], axis=1)

    # smoothed copies
    sig = set(spec.lbp_sigmas) | set(spec.dog_sigmas) | {1.0}
    gs = _gaussians(s_full, sig)
    s = s_full[grid]

    # LBP histograms per region
    region_key = cell_in * 2 + reg_in
    key_bases: dict[int, np.ndarray] = {}
    for sigma in spec.lbp_sigmas:
        q = _quantise(gs[sigma])
        for radius, points in spec.lbp:
            nb = points + 2
            key_base = key_bases.get(nb)
            if key_base is None:
                key_base = key_bases[nb] = region_key * nb
            h = _region_hist(_lbp_riu2_at(q, radius, points, mg, flat_in_tile), nb, key_base, counts)
            out.add(_lbp_names(sigma, radius, points), h)

    # co-occurrence of adjacent LBPs (rotation-invariant approximation of CoALBP: riu2 codes, H+V pairs)
    for radius, d in spec.coalbp:
        sigma0 = spec.lbp_sigmas[0] if spec.lbp_sigmas else 0.0
        codes = _lbp_riu2(_quantise(gs[sigma0]), radius, 8, mg)
        c = _cooc(codes, 10, m, d)
        iu = np.triu_indices(10)
        c = c[:, iu[0], iu[1]]
        c /= np.maximum(c.sum(1, keepdims=True), 1)
        out.add([f"coalbp_r{radius}d{d}_{i}_{j}" for i, j in zip(*iu, strict=True)], c)

    # grey-level co-occurrence (H+V, symmetric)
    lv = spec.glcm_levels
    g = np.minimum((s * lv).astype(np.uint8 if lv <= 255 else np.int64), lv - 1)  # s in [0, 1]: 0..lv-1
    ii, jj = np.meshgrid(np.arange(lv), np.arange(lv), indexing="ij")
    keyed = _cooc_keys(g, lv)
    for d in spec.glcm_distances:
        p = _cooc(g, lv, m, d, keyed)
        p /= np.maximum(p.sum((1, 2), keepdims=True), 1)
        mu = (p * ii).sum((1, 2))
        var = (p * (ii - mu[:, None, None]) ** 2).sum((1, 2))
        corr = (p * (ii - mu[:, None, None]) * (jj - mu[:, None, None])).sum((1, 2)) / np.maximum(var, 1e-9)
        feats = np.stack([
            (p * (ii - jj) ** 2).sum((1, 2)), (p * np.abs(ii - jj)).sum((1, 2)),
            (p / (1.0 + (ii - jj) ** 2)).sum((1, 2)), (p ** 2).sum((1, 2)), corr,
            -(p * np.log(np.maximum(p, 1e-12))).sum((1, 2))], axis=1)
        out.add([f"glcm_d{d}_{k}" for k in ("contrast", "dissimilarity", "homogeneity", "asm", "correlation",
                                             "entropy")], feats)

    # intensity distribution of the stretched cell
    nbq = 64
    s_in = s_full.ravel()[flat_in_tile]  # = s.ravel()[flat_in]: the stretched in-mask pixels
    qb_in = np.minimum((s_in * nbq).astype(np.int64), nbq - 1)
    hist = np.bincount(cell_in * nbq + qb_in, minlength=n * nbq).reshape(n, nbq)
    cdf = np.cumsum(hist, 1) / area1[:, None]
    pcts = (5, 10, 25, 50, 75, 90, 95)
    qs = np.stack([(cdf < p / 100).sum(1) / nbq for p in pcts], axis=1)
    mean, std, skew, kurt = _moments(s_in, cell_in, area1)
    out.add([f"int_p{p}" for p in pcts] + ["int_mean", "int_std", "int_skew", "int_kurt"],
            np.column_stack([qs, mean, std, skew, kurt]))

    # radial profile (rim → centre), relative to the cell mean
    nbr = spec.radial_bins
    rb = np.minimum((rd_in * nbr).astype(np.int64), nbr - 1)
    sv = s_in.astype(np.float64)
    key = cell_in * nbr + rb
    cnt = np.maximum(np.bincount(key, minlength=n * nbr), 1).reshape(n, nbr)
    s1 = np.bincount(key, sv, minlength=n * nbr).reshape(n, nbr) / cnt
    s2 = np.bincount(key, sv * sv, minlength=n * nbr).reshape(n, nbr) / cnt
    rel = np.maximum(mean, 1e-3)[:, None]
    out.add([f"radial_mean_{b}" for b in range(nbr)] + [f"radial_std_{b}" for b in range(nbr)],
            np.column_stack([s1 / rel, np.sqrt(np.maximum(s2 - s1 ** 2, 0)) / rel]))

    # dots: difference-of-Gaussian bands, local maxima counts and strengths, band energy
    for a, b in itertools.pairwise(spec.dog_sigmas):
        names = [f"dog_{a:g}_{b:g}_dots{th:g}" for th in spec.dot_thresholds]
        names += [f"dog_{a:g}_{b:g}_{k}" for k in ("peak_mean", "pos_mean", "pos_energy", "abs_mean")]
        out.add(names, _dog_band(gs[a][grid] - gs[b][grid], m, mf, area1, spec.dot_thresholds, flat_in,
                                       cell_in))

    # bright spots on the sigma-1 smoothed cell: connected components above a threshold
    g1 = gs[1.0]
    for th in spec.spot_thresholds:
        spots = (g1 > th) & mk_full
        # 4-connected components (scipy's default structure) by OpenCV; every statistic below is independent
        # of how the components are numbered (integer sizes, counts and maxima per tile; components never
        # cross tiles: the tiles' margins are outside every mask)
        nlab, lab = cv2.connectedComponents(spots.reshape(n * t, t).view(np.uint8), connectivity=4,
                                            ltype=cv2.CV_32S)
        nlab -= 1
        if nlab:
            on = np.flatnonzero(spots)
            lab_on = lab.ravel()[on]
            sizes = np.bincount(lab_on, minlength=nlab + 1)[1:].astype(np.float64)
            owner = np.zeros(nlab + 1, np.intp)
            owner[lab_on] = on // (t * t)
            owner = owner[1:]
            ncomp = np.bincount(owner, minlength=n)
            total = np.bincount(owner, sizes, minlength=n)
            biggest = np.zeros(n)
            np.maximum.at(biggest, owner, sizes)
        else:
            ncomp, total, biggest = np.zeros(n, np.int64), np.zeros(n), np.zeros(n)
        out.add([f"spot{th:g}_{k}" for k in ("density", "mean_size", "max_share", "area_frac")],
                np.column_stack([ncomp / area1 * 1000.0, total / np.maximum(ncomp, 1), biggest / area1,
                                 total / area1]))

    # gradients of the sigma-1 smoothed cell
    gm, g2 = _gradients(g1, flat_in_tile, region_key, counts)
    out.add(["grad_mean_whole", "grad_mean_inner", "grad_mean_rim", "grad_std", "grad_rel"],
            np.column_stack([*gm, np.sqrt(np.maximum(g2 - gm[0] ** 2, 0)), gm[0] / np.maximum(mean, 1e-3)]))

    # shape
    cy, cx, myy, mxx, mxy = _shape_moments(cell_in, y_in, x_in, area1)
    root = np.sqrt(((myy - mxx) / 2) ** 2 + mxy ** 2)
    l1, l2 = (myy + mxx) / 2 + root, np.maximum((myy + mxx) / 2 - root, 1e-9)
    eq_r = np.sqrt(area1 / math.pi)
    out.add(["shape_area", "shape_eq_radius", "shape_inradius", "shape_elongation"],
            np.column_stack([area, eq_r, dmax, np.sqrt(l1 / l2)]))

    # Gabor energies (FFT), orientation mean and anisotropy per frequency
    if spec.gabor_frequencies:
        fs = sfft.fft2(s_full, axes=(1, 2), workers=1)
        fy = sfft.fftfreq(t)[:, None]
        fx = sfft.fftfreq(t)[None, :]
        total_e = np.einsum("nij,nij->n", s, s, dtype=np.float64) + 1e-9
        for f in spec.gabor_frequencies:
            sf = 0.35 * f
            energies = []
            for k in range(spec.gabor_orientations):
                th = math.pi * k / spec.gabor_orientations
                h = np.exp(-((fy - f * math.sin(th)) ** 2 + (fx - f * math.cos(th)) ** 2) / (2 * sf * sf))
                resp = sfft.ifft2(fs * h.astype(np.float32), axes=(1, 2), workers=1)[grid]
                e = (resp.real ** 2 + resp.imag ** 2) * mf
                energies.append(e.sum((1, 2)) / total_e)
            e = np.stack(energies, 1)
            out.add([f"gabor_f{f:g}_mean", f"gabor_f{f:g}_aniso"],
                    np.column_stack([e.mean(1), (e.max(1) - e.min(1)) / np.maximum(e.mean(1), 1e-9)]))

    # Golgi-oriented asymmetry: where the signal sits relative to the mask centroid
    if spec.golgi:
        rd = dist.reshape(n, t, t)[grid] / dmax[:, None, None]
        rim = m & (rd <= spec.rim_fraction)
        yy, xx = np.mgrid[:m.shape[1], :m.shape[2]].astype(np.float32)
        dy = (yy[None] - cy[:, None, None].astype(np.float32))
        dx = (xx[None] - cx[:, None, None].astype(np.float32))
        w = s * mf
        sw = np.maximum(w.sum((1, 2)), 1e-6)
        r = np.sqrt(dy * dy + dx * dx) + 1e-3
        c1 = np.einsum("nij,nij->n", w, dx / r, dtype=np.float64)
        s1_ = np.einsum("nij,nij->n", w, dy / r, dtype=np.float64)
        c2 = np.einsum("nij,nij->n", w, (dx * dx - dy * dy) / (r * r), dtype=np.float64)
        s2_ = np.einsum("nij,nij->n", w, 2 * dx * dy / (r * r), dtype=np.float64)
        wcy = np.einsum("nij,nij->n", w, dy, dtype=np.float64) / sw
        wcx = np.einsum("nij,nij->n", w, dx, dtype=np.float64) / sw
        octant = ((dy < 0) * 4 + (dx < 0) * 2 + (np.abs(dy) > np.abs(dx))).astype(np.int64).ravel()[flat_in]
        sect = np.bincount(cell_in * 8 + octant, w.ravel()[flat_in], minlength=n * 8).reshape(n, 8) / sw[:, None]
        p90 = qs[:, pcts.index(90)]
        bright = (s >= np.maximum(p90, 1.0 / nbq)[:, None, None].astype(np.float32)) & m
        bf = bright.astype(np.float32)
        nb_ = np.maximum(bf.sum((1, 2)), 1)
        bcy = np.einsum("nij,nij->n", bf, dy, dtype=np.float64) / nb_
        bcx = np.einsum("nij,nij->n", bf, dx, dtype=np.float64) / nb_
        bspread = np.sqrt(np.maximum(np.einsum("nij,nij,nij->n", bf, dy, dy, dtype=np.float64) / nb_ - bcy ** 2
                                     + np.einsum("nij,nij,nij->n", bf, dx, dx, dtype=np.float64) / nb_ - bcx ** 2,
                                     0))
        bsect = np.bincount(cell_in * 8 + octant, bf.ravel()[flat_in], minlength=n * 8).reshape(n, 8) / nb_[:, None]
        p95 = qs[:, pcts.index(95)]
        top = (s >= np.maximum(p95, 1.0 / nbq)[:, None, None].astype(np.float32)) & m
        tf = top.astype(np.float32)
        top_share = np.einsum("nij,nij->n", w, tf, dtype=np.float64) / sw
        ntop = np.maximum(tf.sum((1, 2)), 1)
        # where the brightest 5% sit: depth (0 = mask edge), share in the rim, angular concentration
        top_depth = np.einsum("nij,nij->n", tf, rd, dtype=np.float64) / ntop
        top_rim = _count(top & rim) / ntop
        top_harm = np.hypot(np.einsum("nij,nij->n", tf, dx / r, dtype=np.float64),
                            np.einsum("nij,nij->n", tf, dy / r, dtype=np.float64)) / ntop
        # the rim's signal by octant: a one-sided perinuclear arc puts most of it in one or two octants
        rim_in = rim.ravel()[flat_in]
        rsect = np.bincount(cell_in[rim_in] * 8 + octant[rim_in], w.ravel()[flat_in][rim_in],
                            minlength=n * 8).reshape(n, 8).astype(np.float64, copy=False)  # no rim pixel: int
        rsect /= np.maximum(rsect.sum(1, keepdims=True), 1e-6)
        out.add(["golgi_harm1", "golgi_harm2", "golgi_wcentroid_off", "golgi_bright_off", "golgi_bright_spread",
                 "golgi_sector_max", "golgi_sector_min", "golgi_bsector_max", "golgi_top5_share",
                 "golgi_top5_depth", "golgi_top5_rim", "golgi_top5_harm1", "golgi_rimsector_max",
                 "golgi_rimsector_top2"],
                np.column_stack([np.hypot(c1, s1_) / sw, np.hypot(c2, s2_) / sw, np.hypot(wcy, wcx) / eq_r,
                                 np.hypot(bcy, bcx) / eq_r, bspread / eq_r, sect.max(1), sect.min(1),
                                 bsect.max(1), top_share, top_depth, top_rim, top_harm, rsect.max(1),
                                 np.sort(rsect, 1)[:, -2:].sum(1)]))
    return out


# ------------------------------------------------------------------------------------------------ public


def crop_to_mask(crops: Sequence[Crop]) -> list[Crop]:
    """Each crop cut to its mask's bounding box (a crop without a mask, or with an empty one, is kept whole).
    The descriptors see only the mask's pixels (the stretch zeroes the rest), so what they measure is
    unchanged; the cell's tile is smaller (less work), which moves values by float rounding and the FFT
    smoothing's wrap-around (not bit-identical: ``VALUES_REVISION`` 2; I3A texture argmax unchanged on every cell,
    docs/performance.md "Texture member, session 7")."""
    out: list[Crop] = []
    for image, mask in crops:
        img = np.asarray(image)
        m = None if mask is None else _cell_mask(mask, img.shape[:2])
        if m is None or not m.any():
            out.append((img, m))
            continue
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        box = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
        out.append((img[box], m[box]))
    return out


def _run(crops: Sequence[Crop], spec: DescriptorSpec) -> tuple[np.ndarray, list[str]]:
    if spec.cell_size:
        crops = normalise_size(crops, spec.cell_size)
    crops = crop_to_mask(crops)
    n = len(crops)
    sides = np.array([-(-max(np.shape(img)[:2]) // 8) * 8 for img, _ in crops], dtype=np.int64)
    batches = [members[start:start + spec.batch_size]  # crops of one tile side: a crop's values are its own
               for side in np.unique(sides) for members in [np.flatnonzero(sides == side)]
               for start in range(0, len(members), spec.batch_size)]
    result: np.ndarray | None = None
    names: list[str] = []
    for idx in batches:
        s, mk = _stack([crops[i] for i in idx], spec)
        out = _features(s, mk, spec)
        x = out.array()
        if result is None:
            result = np.empty((n, x.shape[1]), np.float32)
            names = out.names
        result[idx] = x
    if result is None:
        names = feature_names(spec)
        result = np.zeros((0, len(names)), np.float32)
    return np.nan_to_num(result, nan=0.0, posinf=0.0, neginf=0.0), names


def extract(crops: Sequence[Crop], spec: DescriptorSpec | None = None) -> np.ndarray:
    """Descriptors of cell crops ``(image, mask or None)`` → ``float32 (N, F)`` (columns: :func:`feature_names`).

    Images are 2-D (or HxWxC: the brightest channel), any numeric dtype; a mask of ``None`` means the whole
    crop is the cell.
    """
    return _run(crops, spec or DescriptorSpec())[0]


@lru_cache(maxsize=32)
def _names(spec: DescriptorSpec) -> tuple[str, ...]:
    yy, xx = np.mgrid[:40, :40]
    disc = (np.hypot(yy - 20, xx - 20) < 15).astype(np.uint8)
    return tuple(_run([(disc * 100 + 5, disc)], spec)[1])


def feature_names(spec: DescriptorSpec | None = None) -> list[str]:
    """The column names of :func:`extract`'s output for ``spec``."""
    return list(_names(spec or DescriptorSpec()))
