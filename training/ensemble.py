"""Batched prediction with test-time augmentation, and ensembles (probability averaging, stacking).

TTA averages the softmax over the eight dihedral views (D4: cells have no preferred orientation).
Stacking follows seed 001: a logistic regression on the members' concatenated probabilities, fitted on a
held-out split (never on the cells it is evaluated on).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from training.transforms import dihedral, to_float


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None → CUDA if available, else Apple MPS, else CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype on ``device``: bf16 on CUDA that supports it, fp16 on other CUDA, else None."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device) -> torch.autocast:
    """Autocast to :func:`autocast_dtype` on CUDA, disabled elsewhere."""
    dtype = autocast_dtype(device)
    return torch.autocast("cuda", dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)


@torch.inference_mode()
def predict_proba(model: nn.Module, x: np.ndarray | torch.Tensor, tta: int = 1, batch_size: int = 512,
                  device: str | torch.device | None = None) -> np.ndarray:
    """Class probabilities ``(N, num_classes)`` of a ``uint8 (N, C, S, S)`` batch; ``tta`` = 1 or 8 views."""
    if tta not in (1, 8):
        raise ValueError("tta must be 1 (none) or 8 (dihedral views)")
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    xt = torch.as_tensor(x)
    out = []
    for start in range(0, len(xt), batch_size):
        batch = to_float(xt[start:start + batch_size].to(device, non_blocking=True))
        probs = 0
        for k in range(tta):
            with autocast(device):
                logits = model(dihedral(batch, k))
            probs = probs + torch.softmax(logits.float(), dim=1)
        out.append((probs / tta).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def average(probabilities: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of several members' probability arrays (an averaging ensemble)."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probabilities])
    w = np.ones(len(stack)) if weights is None else np.asarray(weights, dtype=np.float64)
    return (np.tensordot(w / w.sum(), stack, axes=1)).astype(np.float32)


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
