"""The faster descriptor helpers give exactly what the code they replaced gives (references: the previous
implementations, kept in analysis.descriptors as ``*_counting`` / ``*_slices`` or written out here)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from analysis import descriptors as D


@pytest.mark.parametrize(("radius", "points"), [(1, 8), (3, 8), (6, 8), (2, 12), (3, 16)])
def test_lbp_codes_equal_counting(radius: int, points: int) -> None:
    rng = np.random.default_rng(radius * 100 + points)
    m = radius + 2
    for levels in (2, 5, 256):  # many ties (>=) and none
        q = rng.integers(0, levels, (5, 30, 30)).astype(np.uint8)
        assert np.array_equal(D._lbp_riu2(q, radius, points, m), D._lbp_riu2_counting(q, radius, points, m))



@pytest.mark.parametrize(("radius", "points", "m"), [(1, 8, 3), (6, 8, 7), (2, 12, 4), (3, 16, 4), (3, 8, 3)])
def test_lbp_codes_at_pixels_equal_counting(radius: int, points: int, m: int) -> None:
    """Codes looked up at chosen grid pixels only (the histograms' in-mask pixels) = the reference's there."""
    rng = np.random.default_rng(radius * 10 + points)
    q = rng.integers(0, 4, (4, 25, 25)).astype(np.uint8)
    ref = D._lbp_riu2_counting(q, radius, points, m)
    on_grid = np.zeros(q.shape, bool)
    on_grid[:, m:-m, m:-m] = rng.random(ref.shape) < 0.4
    idx = np.flatnonzero(on_grid)
    assert np.array_equal(D._lbp_riu2_at(q, radius, points, m, idx), ref[on_grid[:, m:-m, m:-m]])


def _cooc_reference(codes: np.ndarray, nbins: int, m: np.ndarray, d: int) -> np.ndarray:
    """The previous ``_cooc``: each pair's cell, codes and key gathered and formed separately."""
    n = codes.shape[0]
    cell = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None, None] * (nbins * nbins), codes.shape)
    total = np.zeros(n * nbins * nbins, np.float64)
    for a, b, c, va, vb in ((codes[:, :, :-d], codes[:, :, d:], cell[:, :, :-d], m[:, :, :-d], m[:, :, d:]),
                            (codes[:, :-d, :], codes[:, d:, :], cell[:, :-d, :], m[:, :-d, :], m[:, d:, :])):
        valid = va & vb
        key = c[valid] + a[valid].astype(np.int64) * nbins + b[valid]
        total += np.bincount(key, minlength=n * nbins * nbins)
    c = total.reshape(n, nbins, nbins)
    return c + c.transpose(0, 2, 1)


@pytest.mark.parametrize(("nbins", "d"), [(16, 1), (16, 4), (10, 2), (255, 3)])
def test_cooc_equals_reference(nbins: int, d: int) -> None:
    rng = np.random.default_rng(nbins + d)
    codes = rng.integers(0, nbins, (5, 23, 19)).astype(np.uint8)
    m = rng.random(codes.shape) < 0.6
    got = D._cooc(codes, nbins, m, d)
    assert got.dtype == np.float64 and np.array_equal(got, _cooc_reference(codes, nbins, m, d))

def test_max3_equals_slices() -> None:
    rng = np.random.default_rng(0)
    for shape in ((4, 20, 17), (1, 2, 2), (3, 1, 5), (2, 9, 1)):
        r = rng.normal(size=shape).astype(np.float32)
        r[0, 0, 0] = 5.0  # a maximum at a tile corner
        assert np.array_equal(D._max3(r), D._max3_slices(r))
    r64 = rng.normal(size=(2, 6, 6))
    assert np.array_equal(D._max3(r64), D._max3_slices(r64))


@pytest.mark.parametrize("metric", ["chessboard", "taxicab"])
def test_cdt_equals_scipy(metric: str) -> None:
    rng = np.random.default_rng(1)
    for shape in ((40, 33), (1, 7), (7, 1)):
        for fill in (0.3, 0.8, 0.97):
            mask = rng.random(shape) < fill  # touching the array's border too
            got, ref = D._cdt(mask, metric), ndi.distance_transform_cdt(mask, metric)
            assert got.dtype == ref.dtype and np.array_equal(got, ref)
    for mask in (np.ones((5, 6), bool), np.zeros((5, 6), bool)):
        assert np.array_equal(D._cdt(mask, metric), ndi.distance_transform_cdt(mask, metric))


def test_quantise_and_count() -> None:
    rng = np.random.default_rng(2)
    x = (rng.normal(0.5, 0.5, (3, 16, 16)).astype(np.float32))
    x[0, 0, :4] = [0.5 / 255, 1.5 / 255, -0.1, 2.0]  # halves round to even
    assert np.array_equal(D._quantise(x), np.round(x * 255.0).clip(0, 255).astype(np.uint8))
    y = np.abs(x)  # OpenCV's path (no value below -0.5 / 255): halves, tiny negatives, above 1
    y[0, 1, :5] = [2.5 / 255, 254.5 / 255, -1e-7, np.float32(-0.5) / np.float32(255), 1.7]
    assert np.array_equal(D._quantise(y), np.round(y * 255.0).clip(0, 255).astype(np.uint8))
    b = rng.random((4, 9, 7)) < 0.4
    assert np.array_equal(D._count(b), b.sum((1, 2))) and D._count(b).dtype == b.sum((1, 2)).dtype
    assert np.array_equal(D._count(b[:, 1:-1, 2:]), b[:, 1:-1, 2:].sum((1, 2)))


def test_extract_rot90_and_permutation_invariant() -> None:
    """Spot statistics no longer depend on the labelling order: the same cell gives the same row wherever it
    sits in a batch."""
    rng = np.random.default_rng(3)
    crops = []
    for _ in range(10):
        h, w = rng.integers(20, 60, 2)
        yy, xx = np.mgrid[:h, :w]
        mask = ((yy - h / 2) / (h / 2.2)) ** 2 + ((xx - w / 2) / (w / 2.2)) ** 2 <= 1
        img = (rng.random((h, w)) * 40 + 200 * (rng.random((h, w)) < 0.05)).astype(np.uint8)
        crops.append((img, mask))
    x = D.extract(crops)
    order = rng.permutation(len(crops))
    assert np.array_equal(D.extract([crops[i] for i in order]), x[order])


def _stack_case(seed: int, n: int = 6, t: int = 30, mg: int = 4) -> tuple[np.ndarray, np.ndarray, int]:
    """Random stretched tiles ``(N, T, T)`` with blob masks inside the grid ``[mg:-mg, mg:-mg]``."""
    rng = np.random.default_rng(seed)
    s = rng.random((n, t, t)).astype(np.float32)
    yy, xx = np.mgrid[:t, :t]
    mk = np.zeros((n, t, t), bool)
    for i in range(n):
        cy, cx, r = [*rng.uniform(t / 2 - 3, t / 2 + 3, 2).tolist(), rng.uniform(5, t / 2 - mg)]
        mk[i] = (yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.7, 1.3)) ** 2 < r * r
    mk[:, :mg], mk[:, -mg:], mk[:, :, :mg], mk[:, :, -mg:] = False, False, False, False
    return s * mk, mk, mg


def _in_mask(mk: np.ndarray, mg: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(grid mask, its flat in-mask indices, their cells, the same pixels as flat tile indices)."""
    t = mk.shape[-1]
    m = mk[:, mg:t - mg, mg:t - mg]
    flat_in = np.flatnonzero(m)
    hw, gw = m.shape[1] * m.shape[2], m.shape[2]
    cell = flat_in // hw
    return m, flat_in, cell, cell * t * t + (flat_in % hw // gw + mg) * t + (flat_in % gw + mg)


def _same32(got: np.ndarray, ref: np.ndarray) -> None:
    """Equal as the float32 features they become; float64 sums within rounding of each other."""
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)
    assert np.array_equal(np.float32(got), np.float32(ref))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_mask_sums_equal_full_grid(seed: int) -> None:
    """Moments, gradients, shape moments and DoG-band statistics from the in-mask pixels alone = the previous
    full-grid einsums (written out here)."""
    s_full, mk, mg = _stack_case(seed)
    t = s_full.shape[-1]
    m, flat_in, cell, flat_tile = _in_mask(mk, mg)
    grid = (slice(None), slice(mg, t - mg), slice(mg, t - mg))
    s, mf = s_full[grid], m.astype(np.float32)
    area = D._count(m).astype(np.float64)
    area1 = np.maximum(area, 1)
    # intensity moments
    mean = np.einsum("nij,nij->n", s, mf, dtype=np.float64) / area1
    dev = (s - mean[:, None, None].astype(np.float32)) * mf
    var = np.einsum("nij,nij->n", dev, dev, dtype=np.float64) / area1
    ref = [mean, np.sqrt(var),
           np.einsum("nij,nij,nij->n", dev, dev, dev, dtype=np.float64) / area1 / np.maximum(np.sqrt(var), 1e-6) ** 3,
           np.einsum("nij,nij,nij,nij->n", dev, dev, dev, dev, dtype=np.float64) / area1 / np.maximum(var, 1e-9) ** 2]
    for got, want in zip(D._moments(s_full.ravel()[flat_tile], cell, area1), ref, strict=True):
        _same32(got, want)
    # gradients per region (rim: a random half of the in-mask pixels)
    rim = m & (np.random.default_rng(seed).random(m.shape) < 0.5)
    inner = m & ~rim
    counts = np.stack([area, D._count(inner), D._count(rim)], axis=1).astype(np.float64)
    g1 = s_full * 2.0
    gy = (g1[:, mg + 1:t - mg + 1, mg:t - mg] - g1[:, mg - 1:t - mg - 1, mg:t - mg]) * 0.5
    gx = (g1[:, mg:t - mg, mg + 1:t - mg + 1] - g1[:, mg:t - mg, mg - 1:t - mg - 1]) * 0.5
    mag = np.hypot(gy, gx)
    ref_gm = [np.einsum("nij,nij->n", mag, reg.astype(np.float32), dtype=np.float64) / np.maximum(c, 1)
              for reg, c in ((m, area), (inner, counts[:, 1]), (rim, counts[:, 2]))]
    gm, g2 = D._gradients(g1, flat_tile, cell * 2 + rim.ravel()[flat_in], counts)
    for got, want in zip(gm, ref_gm, strict=True):
        _same32(got, want)
    _same32(g2, np.einsum("nij,nij,nij->n", mag, mag, mf, dtype=np.float64) / area1)
    # shape moments
    yy, xx = np.mgrid[:m.shape[1], :m.shape[2]].astype(np.float32)
    cy = np.einsum("nij,nij->n", np.broadcast_to(yy, m.shape), mf, dtype=np.float64) / area1
    cx = np.einsum("nij,nij->n", np.broadcast_to(xx, m.shape), mf, dtype=np.float64) / area1
    dy, dx = yy[None] - cy[:, None, None].astype(np.float32), xx[None] - cx[:, None, None].astype(np.float32)
    ref = [cy, cx] + [np.einsum("nij,nij,nij->n", a, b, mf, dtype=np.float64) / area1
                      for a, b in ((dy, dy), (dx, dx), (dy, dx))]
    for got, want in zip(D._shape_moments(*np.nonzero(m), area1), ref, strict=True):
        _same32(got, want)
    # one DoG band
    r = (s_full - g1 * 0.4)[grid] - 0.1
    peak = (r >= D._max3(r)) & m & (r > 0)
    rp = np.maximum(r, 0) * mf
    ref = [D._msum(peak & (r > th), m) / area1 * 1000.0 for th in (0.03, 0.2)]
    ref += [np.einsum("nij,nij->n", r, peak.astype(np.float32), dtype=np.float64) / np.maximum(D._count(peak), 1),
            rp.sum((1, 2)) / area1, np.einsum("nij,nij->n", rp, rp, dtype=np.float64) / area1,
            D._msum(np.abs(r), mf) / area1]
    got = D._dog_band(np.ascontiguousarray(r), m, mf, area1, (0.03, 0.2), flat_in, cell)
    for k, want in enumerate(ref):
        _same32(got[:, k], want)


def test_edge_depth_equals_cdt_mean() -> None:
    rng = np.random.default_rng(8)
    for mask in (rng.random((40, 33)) < 0.8, np.ones((5, 6), bool), np.zeros((4, 4), bool)):
        want = (ndi.distance_transform_cdt(mask, "chessboard").astype(np.float32)
                + ndi.distance_transform_cdt(mask, "taxicab")) * 0.5
        got = D._edge_depth(mask)
        assert got.dtype == np.float32 and np.array_equal(got, want)
