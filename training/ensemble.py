"""Ensembles of trained members (probability averaging, stacking); the members predict with
:func:`analysis.models.inference.predict_proba`.

Stacking follows seed 001: a logistic regression on the members' concatenated probabilities, fitted on a
held-out split (never on the cells it is evaluated on).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from analysis.models.inference import average, predict_proba


class AveragingEnsemble:
    """Several models → mean of their (TTA) probabilities."""

    def __init__(self, models: Sequence[nn.Module], tta: int = 8) -> None:
        self.models, self.tta = list(models), tta

    def predict_proba(self, x: np.ndarray | torch.Tensor, batch_size: int = 512) -> np.ndarray:
        return average([predict_proba(m, x, self.tta, batch_size) for m in self.models])


class StackingEnsemble:
    """A multinomial logistic regression over the members' concatenated probabilities (seed 001)."""

    def __init__(self, num_classes: int, c: float = 1.0) -> None:
        self.num_classes = num_classes
        self.model = LogisticRegression(C=c, max_iter=2000)

    def fit(self, member_probs: Sequence[np.ndarray], y: np.ndarray) -> StackingEnsemble:
        self.model.fit(np.concatenate(member_probs, axis=1), y)
        return self

    def predict_proba(self, member_probs: Sequence[np.ndarray]) -> np.ndarray:
        probs = self.model.predict_proba(np.concatenate(member_probs, axis=1))
        out = np.zeros((len(probs), self.num_classes), dtype=np.float32)
        out[:, self.model.classes_] = probs  # classes unseen while fitting get probability 0
        return out
