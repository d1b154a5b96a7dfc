"""One-pass relabelling equals relabelling after masking (the code it replaced)."""

from __future__ import annotations

import numpy as np

from analysis.segmentation import relabel, size_filter


def ref_relabel(labels: np.ndarray) -> np.ndarray:
    ids = np.flatnonzero(np.bincount(labels.ravel()))
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def test_relabel_with_drop_equals_masking_first() -> None:
    rng = np.random.default_rng(0)
    for trial in range(100):
        labels = rng.integers(0, int(rng.integers(1, 40)), (30, 40)).astype(np.int32 if trial % 2 else np.int64)
        drop = rng.random(int(labels.max()) + 1) < 0.3
        got = relabel(labels, drop=drop, counts=np.bincount(labels.ravel()) if trial % 3 else None)
        ref = ref_relabel(np.where(drop[labels], 0, labels))
        assert got.dtype == ref.dtype == np.int32 and np.array_equal(got, ref)
        assert np.array_equal(relabel(labels), ref_relabel(labels))
        consecutive = ref_relabel(labels)
        assert np.array_equal(relabel(consecutive), consecutive) and relabel(consecutive) is not consecutive
        areas = np.bincount(labels.ravel())
        bad = (areas < 20) | (areas > 40)
        bad[0] = False
        assert np.array_equal(size_filter(labels, 20, 40), ref_relabel(np.where(bad[labels], 0, labels)))
