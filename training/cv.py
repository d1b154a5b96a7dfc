"""Evaluation splits: grouped K-fold (the headline), random K-fold / single split (paper comparisons).

Grouped splits come from scikit-learn's ``StratifiedGroupKFold`` and are always checked with
:func:`assert_no_group_leakage`, which other code (the training service) can call on its own splits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

Split = tuple[np.ndarray, np.ndarray]


class GroupLeakageError(AssertionError):
    """A patient/specimen group is on both sides of a split."""


def assert_no_group_leakage(groups: Sequence[str] | np.ndarray, train_idx: Sequence[int],
                            test_idx: Sequence[int]) -> None:
    """Raise :class:`GroupLeakageError` if any group has cells in both ``train_idx`` and ``test_idx``."""
    g = np.asarray(groups)
    if len(g) and (np.asarray(g) == "").any():
        raise GroupLeakageError("some cells have no group: grouped splits need a group for every cell")
    train_groups = set(g[np.asarray(train_idx, dtype=int)].tolist())
    shared = train_groups & set(g[np.asarray(test_idx, dtype=int)].tolist())
    if shared:
        raise GroupLeakageError(f"{len(shared)} group(s) on both sides of a split: {sorted(shared)[:10]}")


def grouped_kfold(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int = 0) -> list[Split]:
    """Stratified K-fold over whole groups; every fold is checked for leakage."""
    groups = np.asarray(groups)
    if (groups == "").any():
        raise ValueError("grouped cross-validation needs a group (patient/specimen id) for every cell")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = list(splitter.split(np.zeros(len(labels)), labels, groups))
    for train_idx, test_idx in folds:
        assert_no_group_leakage(groups, train_idx, test_idx)
    return folds


def random_kfold(labels: np.ndarray, n_splits: int, seed: int = 0) -> list[Split]:
    """Stratified K-fold over cells, ignoring groups (inflated: only to compare with papers)."""
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def random_split(labels: np.ndarray, fractions: Sequence[float], seed: int = 0) -> tuple[np.ndarray, ...]:
    """Stratified random split of cell indices, e.g. (0.7, 0.15, 0.15) → train, val, test; (0.9, 0.1) →
    train, test."""
    if not 2 <= len(fractions) <= 3 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 2 or 3 numbers summing to 1, got {fractions}")
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=fractions[-1], stratify=labels, random_state=seed)
    if len(fractions) == 2:
        return rest, test
    val_share = fractions[1] / (fractions[0] + fractions[1])
    train, val = train_test_split(rest, test_size=val_share, stratify=labels[rest], random_state=seed)
    return train, val, test


def inner_validation_split(labels: np.ndarray, groups: np.ndarray | None, val_fraction: float,
                           seed: int = 0) -> Split:
    """Split a training set into train/validation (early stopping): by group when ``groups`` is given."""
    n_splits = max(2, round(1 / val_fraction))
    if groups is None:
        train, val = train_test_split(np.arange(len(labels)), test_size=val_fraction, stratify=labels,
                                      random_state=seed)
        return train, val
    train, val = grouped_kfold(labels, groups, n_splits, seed)[0]
    return train, val
