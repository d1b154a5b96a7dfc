"""Cell-pattern inference for the workers: the bundled production model by default, batched, any device."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.fx.proxy import TraceError

from analysis.device import autocast, default_precision, resolve_device
from analysis.models import DEFAULT_CELL_MODEL
from analysis.models.checkpoint import model_card
from analysis.models.classifier import load_checkpoint
from analysis.preprocess import dihedral, prepare_crop, to_float
from hep2.vocabulary import CELL_PATTERNS, Pattern


@torch.inference_mode()
def predict_proba(model: nn.Module, x: np.ndarray | torch.Tensor, tta: int = 1, batch_size: int = 512,
                  device: str | torch.device | None = None, precision: str = "auto") -> np.ndarray:
    """Class probabilities ``(N, num_classes)`` of a ``uint8 (N, C, S, S)`` batch; ``tta`` = 1 or 8 views.

    TTA averages the softmax over the eight dihedral views (D4: cells have no preferred orientation). All
    views of a chunk of ``batch_size`` cells go through the model in one forward pass (``tta × chunk``
    images; one slide's cells are one chunk), channels-last on the CPU. ``precision``: the autocast of
    :func:`analysis.device.autocast` (``auto``: bf16/fp16 on CUDA, fp32 elsewhere; ``bf16``: bf16 on any
    device). In fp32 the probabilities equal those of one forward pass per view (the views' softmaxes are
    summed in the same order).
    """
    if tta not in (1, 8):
        raise ValueError("tta must be 1 (none) or 8 (dihedral views)")
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    # channels-last for inference models only (a model being trained keeps its layout); the parameters are
    # converted outside inference mode, so they stay ordinary tensors
    channels_last = device.type == "cpu" and x.ndim == 4 and not was_training
    if channels_last:
        with torch.inference_mode(False):
            model.to(memory_format=torch.channels_last)
    xt = torch.as_tensor(x)
    out = []
    for start in range(0, len(xt), batch_size):
        batch = to_float(xt[start:start + batch_size].to(device, non_blocking=True))
        views = torch.cat([dihedral(batch, k) for k in range(tta)]) if tta > 1 else batch
        if channels_last:
            views = views.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(views)
        per_view = torch.softmax(logits.float(), dim=1).reshape(tta, len(batch), -1)
        probs = 0
        for k in range(tta):
            probs = probs + per_view[k]
        out.append((probs / tta).cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with each BatchNorm folded into the convolution before it (torch.fx):
    one operation instead of two, the CNN's forward pass ~15 % faster on the CPU; in fp32 the same
    probabilities up to float rounding (bf16 argmax agreement on the I3A cells: docs/performance.md). For
    evaluation only: the copy has no BatchNorm to train. A model torch.fx cannot trace is returned as it is."""
    try:
        return fuse(model.eval())
    except TraceError:
        return model


def average(probabilities: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of several members' probability arrays (an averaging ensemble)."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in probabilities])
    w = np.ones(len(stack)) if weights is None else np.asarray(weights, dtype=np.float64)
    return (np.tensordot(w / w.sum(), stack, axes=1)).astype(np.float32)


class CellClassifier:
    """Staining-pattern probabilities for cell crops, in :data:`CELL_PATTERNS` order.

    ``weights`` may list several checkpoints with the same input config: their probabilities are averaged
    (an ensemble). ``tta`` defaults to what the first model card says (8 dihedral views when shipped). The
    models are inference copies (:func:`fold_batchnorm`).
    """

    def __init__(self, weights: str | Path | Sequence[str | Path] | None = None,
                 device: str | torch.device | None = "auto", tta: int | None = None,
                 batch_size: int = 256, precision: str | None = None) -> None:
        paths = [DEFAULT_CELL_MODEL] if not weights else [weights] if isinstance(weights, str | Path) else weights
        self.paths = [Path(p) for p in paths]
        self.weights = self.paths[0]
        self.device = resolve_device(device)
        self.models = []
        for path in self.paths:
            if not path.is_file():
                raise FileNotFoundError(f"cell classifier weights not found: {path}")
            model, config = load_checkpoint(path, self.device)
            if self.models and config != self.config:
                raise ValueError(f"{path}: ensemble members need the same input config")
            self.models.append(fold_batchnorm(model))
            self.config = config
        self.model = self.models[0]
        self.card = model_card(self.weights)
        self.tta = tta if tta is not None else int(self.card.get("tta", 1))
        self.batch_size = batch_size
        self.precision = precision or default_precision(self.device)
        if tuple(self.config.classes) != tuple(p.value for p in CELL_PATTERNS):
            raise ValueError(f"{self.weights}: class order {self.config.classes} is not CELL_PATTERNS")

    @property
    def classes(self) -> tuple[Pattern, ...]:
        return CELL_PATTERNS

    def preprocess(self, crops: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
        """(image HxW, mask HxW or None) pairs → ``uint8 (N, C, S, S)``."""
        size, use_mask = self.config.img_size, self.config.use_mask
        if not crops:
            return np.zeros((0, self.config.in_chans, size, size), np.uint8)
        return np.stack([prepare_crop(img, mask, size, use_mask) for img, mask in crops])

    def predict(self, crops: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
        """Probabilities ``(N, 6)`` (rows sum to 1) for a list of (image uint8 HxW, mask bool HxW)."""
        if not crops:
            return np.zeros((0, len(CELL_PATTERNS)), np.float32)
        return self.predict_array(self.preprocess(crops))

    def predict_array(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for already pre-processed crops ``uint8 (N, C, S, S)``."""
        return average([predict_proba(m, x, tta=self.tta, batch_size=self.batch_size, device=self.device,
                                      precision=self.precision) for m in self.models])

    def predict_patterns(self, crops: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> list[Pattern]:
        """The most probable pattern of each crop."""
        return [CELL_PATTERNS[i] for i in self.predict(crops).argmax(axis=1)]
