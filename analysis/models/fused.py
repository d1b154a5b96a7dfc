"""The cell classifier the pipeline uses: an ensemble of model families fused with per-class weights.

A fused model is a JSON file (format ``hep2-cell-ensemble/1``) naming its members beside it — a CNN
checkpoint (``family: cnn``, :class:`analysis.models.inference.CellClassifier`) and a texture-feature model
(``family: texture``, :class:`analysis.texture_model.TextureModel`) — with each member file's sha256, and
one weight per member and class. The fused probability of class c is ``sum_m w[m, c] * p_m[c]``, rows
renormalised to 1: each family counts where it is reliable (e.g. Golgi from the CNN alone, which the texture
model misses). The weights are chosen on out-of-fold predictions only (``training.fusion``).

:func:`load_cell_classifier` is the one loader: a ``.safetensors`` file is a CNN alone (still selectable,
e.g. ``HEP2_CELL_MODEL_PATH``), a ``.json`` of this format the fused model. The shipped fused model is the
default only when its card says ``"promoted": true`` (:func:`fused_promoted`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from analysis.device import resolve_device
from analysis.models import DEFAULT_CELL_MODEL, WEIGHTS_DIR
from analysis.models.inference import CellClassifier
from analysis.texture_model import TextureModel
from hep2.vocabulary import CELL_PATTERNS, Pattern

FORMAT = "hep2-cell-ensemble/1"
DEFAULT_FUSED_MODEL = WEIGHTS_DIR / "cells-fused.json"
"""The shipped fused classifier (the default only when its card says ``"promoted": true``)."""
Crop = tuple[np.ndarray, np.ndarray | None]


class Member(Protocol):
    def predict(self, crops: Sequence[Crop]) -> np.ndarray: ...


class TextureMember:
    """A :class:`TextureModel` with the classifier interface (``predict``)."""

    def __init__(self, path: Path) -> None:
        self.model = TextureModel.load(path)

    def predict(self, crops: Sequence[Crop]) -> np.ndarray:
        return self.model.predict_proba(crops)


def fuse(member_probs: Sequence[np.ndarray], weights: np.ndarray) -> np.ndarray:
    """Per-class weighted sum of the members' probabilities ``(M, N, C)`` with weights ``(M, C)``; rows
    renormalised (a row that sums to 0 stays uniform)."""
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs])
    fused = np.einsum("mnc,mc->nc", stack, np.asarray(weights, dtype=np.float64))
    total = fused.sum(axis=1, keepdims=True)
    fused = np.where(total > 0, fused / np.where(total > 0, total, 1), 1.0 / stack.shape[2])
    return fused.astype(np.float32)


class FusedCellClassifier:
    """Members' probabilities fused per class (see the module docstring); the pipeline's interface."""

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        self.path = Path(path)
        doc = json.loads(self.path.read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"{self.path}: not a {FORMAT} file (format {doc.get('format')!r})")
        if tuple(doc["classes"]) != tuple(p.value for p in CELL_PATTERNS):
            raise ValueError(f"{self.path}: class order {doc['classes']} is not CELL_PATTERNS")
        self.card: dict[str, Any] = doc
        self.members: list[Member] = []
        self.paths: list[Path] = [self.path]
        for entry in doc["members"]:
            member_path = self.path.with_name(entry["file"])
            digest = hashlib.sha256(member_path.read_bytes()).hexdigest()
            if digest != entry["sha256"]:
                raise ValueError(f"{member_path}: sha256 differs from the one in {self.path.name} (modified)")
            if entry["family"] == "cnn":
                self.members.append(CellClassifier(member_path, device=device))
            elif entry["family"] == "texture":
                self.members.append(TextureMember(member_path))
            else:
                raise ValueError(f"{self.path}: unknown member family {entry['family']!r}")
            self.paths.append(member_path)
        self.weights = np.array([entry["class_weights"] for entry in doc["members"]], dtype=np.float64)
        if self.weights.shape != (len(self.members), len(CELL_PATTERNS)) or (self.weights < 0).any():
            raise ValueError(f"{self.path}: class_weights must be non-negative, one per class and member")
        self.cnn: CellClassifier | None = next((m for m in self.members if isinstance(m, CellClassifier)), None)
        self.tta = self.cnn.tta if self.cnn else None
        self.device = self.cnn.device if self.cnn else resolve_device("cpu")  # the texture member runs on the CPU

    @property
    def classes(self) -> tuple[Pattern, ...]:
        return CELL_PATTERNS

    def member_predictions(self, crops: Sequence[Crop]) -> list[np.ndarray]:
        return [m.predict(crops) for m in self.members]

    def predict(self, crops: Sequence[Crop]) -> np.ndarray:
        """Fused probabilities ``(N, 6)`` for (image uint8 HxW, mask bool HxW) pairs."""
        if not crops:
            return np.zeros((0, len(CELL_PATTERNS)), np.float32)
        return fuse(self.member_predictions(crops), self.weights)


def cnn_of(classifier: Any) -> CellClassifier:
    """The CNN of a cell classifier: itself, or a fused model's CNN member (what batch size and precision
    apply to; the texture member computes per cell)."""
    if isinstance(classifier, FusedCellClassifier):
        if classifier.cnn is None:
            raise ValueError(f"{classifier.path}: the fused model has no CNN member")
        return classifier.cnn
    return classifier


def fused_promoted(path: Path = DEFAULT_FUSED_MODEL) -> bool:
    """Whether the shipped fused model is the default: it exists and its card says ``"promoted": true`` (set
    only after whole fields are checked with ``hep2 evaluate fields``, not by the I3A cross-validation alone)."""
    try:
        return path.is_file() and bool(json.loads(path.read_text()).get("promoted", False))
    except (OSError, ValueError):
        return False


def default_cell_model() -> Path:
    """The fused model when it is shipped and promoted, else the CNN."""
    return DEFAULT_FUSED_MODEL if fused_promoted() else DEFAULT_CELL_MODEL


def load_cell_classifier(path: str | Path | None = None, device: str = "auto") -> CellClassifier | FusedCellClassifier:
    """The one loader of cell classifiers: ``.json`` → fused ensemble, ``.safetensors`` → CNN alone;
    None → :func:`default_cell_model`."""
    chosen = Path(path) if path else default_cell_model()
    if chosen.suffix == ".json":
        return FusedCellClassifier(chosen, device=device)
    return CellClassifier(chosen, device=device)
