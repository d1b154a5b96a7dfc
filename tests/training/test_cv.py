from __future__ import annotations

import numpy as np
import pytest

from training.cv import (
    GroupLeakageError,
    assert_no_group_leakage,
    grouped_kfold,
    inner_validation_split,
    random_kfold,
    random_split,
)


def leaky_dataset() -> tuple[np.ndarray, np.ndarray]:
    """20 specimens of 30 cells, 5 classes (one per 4 specimens): cell-level folds must leak."""
    groups = np.repeat([f"s{i:02d}" for i in range(20)], 30)
    labels = np.repeat(np.arange(20) // 4, 30)
    return labels, groups


def test_leakage_assertion_catches_cell_level_folds() -> None:
    labels, groups = leaky_dataset()
    folds = random_kfold(labels, 5, seed=0)
    with pytest.raises(GroupLeakageError, match="both sides"):
        for train, test in folds:
            assert_no_group_leakage(groups, train, test)


def test_leakage_assertion_on_a_hand_made_split() -> None:
    groups = np.array(["a", "a", "b", "c"])
    assert_no_group_leakage(groups, [0, 1, 2], [3])
    with pytest.raises(GroupLeakageError, match=r"\['a'\]"):
        assert_no_group_leakage(groups, [0, 2], [1, 3])
    with pytest.raises(GroupLeakageError, match="no group"):
        assert_no_group_leakage(np.array(["a", ""]), [0], [1])


def test_grouped_kfold_keeps_every_group_on_one_side() -> None:
    labels, groups = leaky_dataset()
    folds = grouped_kfold(labels, groups, 4, seed=3)
    seen = np.concatenate([test for _, test in folds])
    assert sorted(seen) == list(range(len(labels)))  # every cell tested exactly once
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
    with pytest.raises(ValueError, match="group"):
        grouped_kfold(labels, np.where(np.arange(len(groups)) == 0, "", groups), 4)


def test_inner_validation_split_by_group_and_random_split_sizes() -> None:
    labels, groups = leaky_dataset()
    tr, va = inner_validation_split(labels, groups, 0.25, seed=0)
    assert not set(groups[tr]) & set(groups[va]) and len(tr) + len(va) == len(labels)
    train, val, test = random_split(labels, (0.7, 0.15, 0.15), seed=0)
    assert (len(train), len(val), len(test)) == (420, 90, 90)
    assert len(set(train) | set(val) | set(test)) == len(labels)
    train, test = random_split(labels, (0.9, 0.1))
    assert len(test) == 60
    with pytest.raises(ValueError):
        random_split(labels, (0.5, 0.2))
