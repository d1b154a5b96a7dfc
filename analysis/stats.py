"""``np.median`` and ``np.percentile`` (linear method), the same values and dtypes bit for bit, faster.

* Large float arrays (:func:`median`, :func:`percentile`; at least :data:`MIN_SIZE` values): numpy finds the
  order statistics it needs by a partial sort (introselect) of a copy of the whole array. Here they are found
  by a bucket select: one pass maps every value to one of 4,096 buckets by a monotone function (subtract the
  minimum, scale, truncate: ``a < b`` whenever ``bucket(a) < bucket(b)``), a histogram of the buckets says
  which bucket holds each wanted order statistic, and only that bucket's values are partitioned.
* Small arrays that the caller sorts once (:func:`sorted_median`, :func:`sorted_percentile`: per-cell
  statistics) and ``uint8`` images (:func:`uint8_percentile`: order statistics from a 256-bin histogram)
  skip numpy's per-call overhead.

The order statistics are exactly numpy's; the last step repeats numpy's own arithmetic (the mean of the two
middle values as ``np.mean`` computes it; numpy's virtual index ``(n - 1) q``, its gamma and its ``_lerp``,
with numpy's type promotion: a Python scalar ``q`` is weak, so a float32 input gives a float32 result), so
the results equal ``np.median`` / ``np.percentile`` in value and dtype (tests/pipeline/test_stats_exact.py).
Input these functions do not handle (NaN or infinities, integer arrays for the large path, array-valued or
out-of-range ``q``) goes to numpy unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

MIN_SIZE = 50_000
"""Below this many values numpy's introselect is as fast (and this module just calls it)."""
_BUCKETS = 4096
_HIST_MAX = 2 ** 24
"""Up to this many values the buckets are counted by OpenCV (float32 counts: exact below 2**24)."""


def _order_stats(a: np.ndarray, ks: Sequence[int]) -> list[np.floating] | None:
    """The ``ks``-th smallest values (0-based) of the flat float array ``a``; None when ``a`` holds a NaN or
    an infinity (the caller uses numpy)."""
    lo, hi = a.min(), a.max()
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    if lo == hi:
        return [lo for _ in ks]
    span = float(hi) - float(lo)
    with np.errstate(over="ignore"):
        scale = a.dtype.type((_BUCKETS - 1) / span)
        fits = np.isfinite(hi - lo)
    if not (np.isfinite(span) and fits and np.isfinite(scale) and scale > 0):
        return None  # a range beyond the dtype (or too small to scale): numpy
    idx, counts = _buckets(a, lo, scale)
    cum = np.cumsum(counts)
    bucket_of = {k: int(np.searchsorted(cum, k, side="right")) for k in ks}
    out: dict[int, np.floating] = {}
    for b in sorted(set(bucket_of.values())):
        below = int(cum[b - 1]) if b > 0 else 0
        wanted = [k for k in ks if bucket_of[k] == b]
        part = np.partition(a[idx == b], sorted({k - below for k in wanted}))
        out.update({k: part[k - below] for k in wanted})
    return [out[k] for k in ks]


def _buckets(a: np.ndarray, lo: np.floating, scale: np.floating) -> tuple[np.ndarray, np.ndarray]:
    """Each value's bucket ``trunc((a - lo) * scale)`` (0.._BUCKETS: monotone non-decreasing in the value, each
    operation being correctly rounded, so buckets preserve order) and the buckets' counts (int64). Below 2**24
    values the buckets are ``uint16`` and counted by OpenCV's histogram (its float32 counts are exact there;
    numpy's ``bincount`` would first copy them to ``intp``): the same buckets and counts, in half the time."""
    t = np.subtract(a, lo)
    np.multiply(t, scale, out=t)
    if a.size >= _HIST_MAX:
        idx = t.astype(np.intp)
        return idx, np.bincount(idx, minlength=_BUCKETS + 1)
    idx = t.astype(np.uint16)
    counts = cv2.calcHist([idx.reshape(-1, 1)], [0], None, [_BUCKETS + 1], [0, _BUCKETS + 1])
    return idx, counts.ravel().astype(np.int64)


def _usable(a: np.ndarray) -> bool:
    return a.dtype.kind == "f" and a.size >= MIN_SIZE and a.dtype.itemsize in (4, 8)


def median(values: np.ndarray) -> np.floating:
    """``np.median(values)`` (all elements), the same value and dtype."""
    a = np.asarray(values)
    if not _usable(a):
        return np.median(a)
    a = a.ravel()
    n = a.size
    ks = [(n - 1) // 2, n // 2]
    found = _order_stats(a, ks)
    if found is None:
        return np.median(a)
    # numpy: mean of the middle element (odd) or of the two middle elements (even), in the input's dtype
    return np.median(np.array(found[:1] if n % 2 else found, dtype=a.dtype))


def _linear(n: int, q: float | Sequence[float], order_stats: Callable[[list[int]], list[Any]],
            ) -> np.floating | np.ndarray:
    """numpy's ``percentile(..., method="linear")`` of ``n`` values, given a function that returns the k-th
    smallest values (0-based ``ks``, numpy scalars of the input's dtype): numpy's virtual index ``(n - 1) q``,
    its gamma and its ``_lerp`` (``a + (b - a) t``, or ``b - (b - a)(1 - t)`` for ``t >= 0.5``), one quantile
    at a time with numpy scalars, so the same value and dtype: a Python scalar ``q`` is weak as in numpy (the
    result keeps a float32 input's dtype), a list of ``q`` gives float64 gammas and a float64 array."""
    weak_q = type(q) in (int, float)
    qs = [q] if weak_q else [float(x) for x in q]  # type: ignore[union-attr]
    steps = []
    for qi in qs:
        v = (n - 1) * (qi / 100)  # numpy: (n - 1) * true_divide(q, 100), in float64
        f = math.floor(v)
        i, j = (n - 1, n - 1) if v >= n - 1 else (f, f + 1)
        steps.append((v - f, i, j))
    ks = sorted({k for _, i, j in steps for k in (i, j)})
    lookup = dict(zip(ks, order_stats(ks), strict=True))
    out = []
    for gamma, i, j in steps:
        t = gamma if weak_q else np.float64(gamma)  # numpy's gamma: float64, weak when q was a Python scalar
        a, b = lookup[i], lookup[j]
        diff = b - a
        out.append(b - diff * (1 - t) if t >= 0.5 else a + diff * t)
    return out[0] if weak_q else np.array(out)


def _plain_q(q: float | Sequence[float]) -> bool:
    """A Python number or a flat sequence of Python numbers in [0, 100] (anything else goes to numpy)."""
    if type(q) in (int, float):
        return 0 <= q <= 100  # type: ignore[operator]
    return (isinstance(q, list | tuple) and len(q) > 0
            and all(type(x) in (int, float) and 0 <= x <= 100 for x in q))


def percentile(values: np.ndarray, q: float | Sequence[float]) -> np.floating | np.ndarray:
    """``np.percentile(values, q)`` (all elements, method ``linear``), the same value(s) and dtype."""
    a = np.asarray(values)
    if not _usable(a) or not _plain_q(q):
        return np.percentile(a, q)
    a = a.ravel()
    n = a.size
    ks = set()
    for qi in [q] if type(q) in (int, float) else q:  # type: ignore[union-attr]
        v = (n - 1) * (qi / 100)
        ks |= {min(math.floor(v), n - 1), min(math.floor(v) + 1, n - 1)}
    found = _order_stats(a, sorted(ks))
    if found is None:
        return np.percentile(a, q)
    lookup = dict(zip(sorted(ks), found, strict=True))
    return _linear(n, q, lambda wanted: [lookup[k] for k in wanted])  # type: ignore[arg-type,return-value]


def _small_ok(a: np.ndarray) -> bool:
    return a.ndim == 1 and a.size > 0 and a.dtype.kind == "f" and a.dtype.itemsize in (4, 8)


def sorted_median(values: np.ndarray, sorted_values: np.ndarray) -> np.floating:
    """``np.median(values)`` of a 1-D float array from ``np.sort(values)`` (same value and dtype)."""
    sv = sorted_values
    if not _small_ok(sv) or not (np.isfinite(sv[0]) and np.isfinite(sv[-1])):
        return np.median(values)
    n = sv.size
    k = n // 2
    if n % 2:
        return sv[k]
    total = np.add.reduce(sv[k - 1:k + 1])  # np.mean of the two middle values, as np.median does
    return total.dtype.type(total / np.intp(2))


def sorted_percentile(values: np.ndarray, sorted_values: np.ndarray,
                      q: float | Sequence[float]) -> np.floating | np.ndarray:
    """``np.percentile(values, q)`` of a 1-D float array from ``np.sort(values)`` (same value(s) and dtype)."""
    sv = sorted_values
    if not _small_ok(sv) or not _plain_q(q) or not (np.isfinite(sv[0]) and np.isfinite(sv[-1])):
        return np.percentile(values, q)
    return _linear(sv.size, q, lambda ks: [sv[k] for k in ks])  # type: ignore[arg-type,return-value]


def uint8_percentile(image: np.ndarray, q: float | Sequence[float], dtype: type = np.float32,
                     ) -> np.floating | np.ndarray:
    """``np.percentile(image.astype(dtype), q)`` of a ``uint8`` array (all elements, method ``linear``), from a
    256-bin histogram instead of a partial sort (same value(s) and dtype)."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.size == 0 or not _plain_q(q):
        return np.percentile(img.astype(dtype), q)
    cum = np.cumsum(np.bincount(img.ravel(), minlength=256))
    levels = np.arange(256, dtype=dtype)
    return _linear(img.size, q, lambda ks: list(levels[np.searchsorted(cum, ks, side="right")]))
