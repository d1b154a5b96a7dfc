"""The one cross-validation loop of the cell classifier, used by ``hep2 train cells``
(:mod:`training.experiment`) and by the service's retraining runs (:mod:`training.retrain`).

Per fold: an inner validation split of the training part (by specimen group when grouped), a fresh fit,
test-time-augmented probabilities on the test part and their metrics. Callers decide what to store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from analysis.models.classifier import ModelConfig
from analysis.models.inference import predict_proba
from training.cv import assert_no_group_leakage, inner_validation_split
from training.metrics import classification_metrics
from training.trainer import JsonlLogger, TrainConfig, TrainResult, fit

Fold = tuple[np.ndarray, np.ndarray | None, np.ndarray]
"""train, validation (None: drawn inside train), test indices."""


@dataclass
class FoldOutcome:
    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    probs: np.ndarray
    """Test-fold probabilities (N_test, classes)."""
    metrics: dict
    fit: TrainResult


def inner_split(train: np.ndarray, y: np.ndarray, groups: np.ndarray | None, fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation indices inside ``train`` (by group when ``groups`` is given), leakage-checked."""
    tr, va = inner_validation_split(y[train], groups[train] if groups is not None else None, fraction, seed)
    tr, va = train[tr], train[va]
    if groups is not None:
        assert_no_group_leakage(groups, tr, va)
    return tr, va


def cross_validate(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, folds: list[Fold],
                   model_cfg: ModelConfig, train_cfg: TrainConfig, tta: int, val_fraction: float,
                   split_seed: int, log_for: Callable[[int], JsonlLogger],
                   checkpoint_for: Callable[[int], str] | None = None) -> Iterator[FoldOutcome]:
    """Fit and test each fold in turn (``groups`` None: ungrouped inner splits); yields as folds finish.

    ``checkpoint_for(k)``: a file for fold k's per-epoch training state, so a stopped run resumes there."""
    for k, (train, val, test) in enumerate(folds):
        if groups is not None:
            assert_no_group_leakage(groups, train, test)
        if val is None:
            train, val = inner_split(train, y, groups, val_fraction, split_seed + k)
        cfg = replace(train_cfg, checkpoint=checkpoint_for(k)) if checkpoint_for else train_cfg
        result = fit(x[train], y[train], model_cfg, cfg, x[val], y[val], log_for(k))
        probs = predict_proba(result.model, x[test], tta=tta)
        yield FoldOutcome(k, train, val, test, probs, classification_metrics(y[test], probs.argmax(1)), result)
