"""Training fields for the segmenter, composed from real I3A cells and their masks.

The I3A Task-1 set (``../shared/data/i3a-task1``) has single cells (54–111 px, 8-bit, low dynamic range) with
masks but no whole fields, so fields are composed, at the segmenter's *working resolution*, as follows
(:func:`compose_field`; every random choice comes from one ``numpy.random.Generator``):

1. **Background**: a level of ``gain × U(0.02, 0.3) + U(0, 0.03)`` (full scale; ``gain`` see 2.), times an
   *uneven illumination* surface (a smooth random field: Gaussian-blurred noise at sigma = size/3, plus a
   linear ramp; ±30 %), plus faint diffuse "cytoplasm" texture (blurred noise, up to 40 % of the cell
   brightness in some fields) that is NOT labelled.
2. **Cells**: a field scale ``s`` log-uniform in ``[scale_min, scale_max]`` (default 0.15–0.75: nuclei of
   ~8–70 px at working resolution; at inference the segmenter rescales each field so that its typical
   nucleus is ~28 px across, see ``analysis.segmentation.estimate_scale``), per-cell
   jitter ×U(0.85, 1.15); each cell is cut out with its mask (the crop's own background, its 10th
   percentile outside the mask, is subtracted), stretched to its 99th percentile, randomly rotated (any
   angle) and flipped, and pasted *with its real surroundings* (cytoplasm, bits of neighbours; unlabelled)
   fading out over a soft margin (exp(-distance / (0.15 × cell size)); 30 % of cells are pasted without
   them), with a gain (field gain log-uniform in [0.1, 0.9], per cell ×U(0.5, 1.5)).
   Placement allows *touching and overlapping* cells: a new cell may cover at most ``max_overlap`` (25 %)
   of its area on earlier ones; it is drawn on top (its label wins; the covered cell keeps 30 % of its
   brightness beneath it). Cells may be cut by the field border. Density: 0.2–1.0 of the area the cells
   would tile.
3. **Distractors** (not labelled): a diffuse cytoplasm body around 60 % of the nuclei (the blurred,
   widened nucleus mask at 5–35 % of the field gain), small bright debris specks (2–4 px).
4. **Optics and sensor**: Gaussian blur sigma ``U(0, 1.5)``, signal-dependent (shot) noise plus read noise,
   and 8-bit quantisation in half the fields.
5. **Dim fields**: 12 % of fields have a field gain of 0.01–0.04 (weak, "negative-ish" wells; cells still
   labelled), and 5 % have no cells at all (an empty well: background, illumination, cytoplasm, debris).

Targets: instance labels (int32), foreground = labels > 0, and per instance the Euclidean distance to its
edge divided by that instance's maximum (1 at the centre, ~0 at the edge), which the U-Net learns to split
touching nuclei.

Train vs validation fields use disjoint I3A ``specimen_group``s (:func:`split_groups`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.model_selection import GroupShuffleSplit

from training.datasets import CellTable


@dataclass(frozen=True)
class CellBank:
    """Cut-out cells: float32 images (background-subtracted, ~[0, 1], with their surroundings) and bool masks."""

    images: list[np.ndarray]
    masks: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)


def split_groups(groups: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) with whole ``specimen_group``s on one side (sklearn GroupShuffleSplit)."""

    groups = np.asarray(groups)
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train, val = next(splitter.split(np.zeros(len(groups)), groups=groups))
    return np.sort(train), np.sort(val)


def cut_out(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One I3A crop → (float32 crop minus its background, the cell stretched to ~[0, 1]; bool mask).

    The crop keeps what surrounds the cell (cytoplasm, parts of neighbours): pasted with a soft margin it
    gives the network real unlabelled context next to labelled nuclei. The background is the crop's 10th
    percentile outside the mask.
    """
    img = image.astype(np.float32)
    if img.ndim == 3:
        img = img[..., :3].max(axis=-1)
    m = np.asarray(mask) > 0
    if m.ndim == 3:
        m = m[..., 0]
    if not m.any():
        m = np.ones_like(m)
    bg = float(np.percentile(img[~m], 10)) if (~m).any() else float(img.min())
    cell = np.clip(img - bg, 0, None)
    top = float(np.percentile(cell[m], 99)) if m.any() else 1.0
    return (cell / max(top, 1.0)).astype(np.float32), m


def load_bank(table: CellTable, indices: Sequence[int] | None = None) -> CellBank:
    """Read and cut out the cells of ``table`` (all, or ``indices``)."""
    images, masks = [], []
    for i in range(len(table)) if indices is None else indices:
        image, mask = table.read_crop(int(i))
        if mask is None:
            continue
        cell, m = cut_out(image, mask)
        images.append(cell)
        masks.append(m)
    return CellBank(images, masks)


def _smooth_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-amplitude smooth random field."""
    f = ndimage.gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    return f / max(float(np.abs(f).max()), 1e-6)


def _transform(cell: np.ndarray, mask: np.ndarray, scale: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scale, rotate (any angle) and flip one cell and its mask; the surroundings fade out (soft margin)."""
    if rng.random() < 0.5:
        cell, mask = cell[:, ::-1], mask[:, ::-1]
    cell = ndimage.zoom(cell, scale, order=1)
    m = ndimage.zoom(mask.astype(np.float32), scale, order=1)
    angle = float(rng.uniform(0, 360))
    cell = ndimage.rotate(cell, angle, order=1, reshape=True)
    m = ndimage.rotate(m, angle, order=1, reshape=True) > 0.5
    margin = ndimage.distance_transform_edt(~m)
    alpha = np.exp(-margin / max(3.0, 0.15 * np.sqrt(m.sum()))) * float(rng.uniform(0.0, 1.0) < 0.7)
    alpha = np.where(m, 1.0, alpha)
    return (np.clip(cell, 0, None) * alpha).astype(np.float32), m


def compose_field(bank: CellBank, size: tuple[int, int] = (192, 192), rng: np.random.Generator | None = None,
                  scale_min: float = 0.15, scale_max: float = 0.75, max_overlap: float = 0.25,
                  empty_prob: float = 0.05, dim_prob: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """One composed field: (float32 signal in [0, 1] of full scale, int32 instance labels). See module doc."""
    rng = rng or np.random.default_rng()
    h, w = size
    labels = np.zeros(size, np.int32)
    cells = np.zeros(size, np.float32)
    scale = float(np.exp(rng.uniform(np.log(scale_min), np.log(scale_max))))
    gain = float(np.exp(rng.uniform(np.log(0.1), np.log(0.9))))
    if rng.random() < dim_prob:
        gain = float(rng.uniform(0.01, 0.04))
    n_cells = 0
    if len(bank) and rng.random() >= empty_prob:
        mean_area = float(np.mean([m.sum() for m in bank.masks[:200]])) * scale**2
        n_cells = int(rng.uniform(0.2, 1.0) * h * w / max(mean_area, 1.0))
    attempts = 0
    halos: list[tuple[slice, slice, np.ndarray, float]] = []
    while n_cells > 0 and attempts < 4 * n_cells + 10:
        attempts += 1
        k = int(rng.integers(len(bank)))
        cell, m = _transform(bank.images[k], bank.masks[k], scale * rng.uniform(0.85, 1.15), rng)
        ch, cw = m.shape
        y0, x0 = int(rng.integers(-ch // 3, h - 2 * ch // 3)), int(rng.integers(-cw // 3, w - 2 * cw // 3))
        ys, xs = slice(max(y0, 0), min(y0 + ch, h)), slice(max(x0, 0), min(x0 + cw, w))
        sub_m = m[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
        if sub_m.sum() < 0.3 * m.sum() or (labels[ys, xs][sub_m] > 0).mean() > max_overlap:
            continue
        sub_c = cell[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] * gain * rng.uniform(0.5, 1.5)
        labels[ys, xs][sub_m] = int(labels.max()) + 1
        covered = np.maximum(sub_c, cells[ys, xs] * 0.3)
        cells[ys, xs] = np.where(sub_m, covered, np.maximum(cells[ys, xs], sub_c))  # context: unlabelled
        if rng.random() < 0.6:  # a cytoplasm body around the nucleus, unlabelled
            halos.append((ys, xs, sub_m, float(gain * rng.uniform(0.05, 0.35))))
        n_cells -= 1
    labels = _drop_slivers(labels)
    background = gain * rng.uniform(0.02, 0.3) + rng.uniform(0.0, 0.03)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    illum = 1.0 + 0.2 * _smooth_field(size, max(h, w) / 3, rng) + rng.uniform(-0.1, 0.1) * (yy + xx - 1)
    cyto = ndimage.gaussian_filter(rng.random(size).astype(np.float32), rng.uniform(2, 6))
    cyto = (cyto - cyto.min()) / max(float(np.ptp(cyto)), 1e-6) * gain * rng.uniform(0, 0.4)
    body = np.zeros(size, np.float32)
    for ys, xs, sub_m, level in halos:
        grown = ndimage.gaussian_filter(sub_m.astype(np.float32), max(1.0, 0.25 * np.sqrt(sub_m.sum())))
        body[ys, xs] = np.maximum(body[ys, xs], np.clip(grown * 3, 0, 1) * level)
    cells = np.where(labels > 0, cells, np.maximum(cells, body))
    signal = (background + cyto + cells) * illum
    for _ in range(int(rng.integers(0, 6))):  # debris specks, unlabelled
        cy, cx, r = int(rng.integers(h)), int(rng.integers(w)), int(rng.integers(1, 3))
        signal[max(cy - r, 0):cy + r, max(cx - r, 0):cx + r] += gain * rng.uniform(0.5, 1.5)
    signal = ndimage.gaussian_filter(signal, rng.uniform(0, 1.5))
    photons = rng.uniform(300, 3000)  # photons at full scale: shot noise
    signal = rng.poisson(np.clip(signal, 0, None) * photons) / photons + rng.normal(0, rng.uniform(0.002, 0.01), size)
    if rng.random() < 0.5:
        signal = np.round(signal * 255) / 255
    return np.clip(signal, 0, 1).astype(np.float32), labels


def _drop_slivers(labels: np.ndarray, min_area: int = 12) -> np.ndarray:
    """Remove instances left tiny by occlusion (or by the border), relabel 1..N."""
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = True
    labels = np.where(keep[labels], labels, 0)
    ids = np.unique(labels)
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(len(ids), dtype=np.int32)
    return lut[labels]


def distance_target(labels: np.ndarray) -> np.ndarray:
    """Per instance, distance to its edge divided by the instance's maximum: float32 in [0, 1]."""
    out = np.zeros(labels.shape, np.float32)
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        m = labels[sl] == i
        d = ndimage.distance_transform_edt(m)
        out[sl][m] = (d[m] / max(float(d.max()), 1.0)).astype(np.float32)
    return out


def compose_batch(bank: CellBank, n: int, size: int, rng: np.random.Generator,
                  **kwargs: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` fields: (signals (n, size, size), labels (n, size, size), distance targets (n, size, size))."""
    fields = [compose_field(bank, (size, size), rng, **kwargs) for _ in range(n)]
    signals = np.stack([f[0] for f in fields])
    labels = np.stack([f[1] for f in fields])
    return signals, labels, np.stack([distance_target(lab) for lab in labels])
