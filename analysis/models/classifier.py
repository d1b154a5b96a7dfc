"""Cell-pattern classifiers: a model factory over timm (always from scratch: ``pretrained=False``) and
their checkpoints (:mod:`analysis.models.checkpoint`).

Names are timm names plus a few aliases tuned for small HEp-2 crops (48-96 px, 1 or 2 channels). A
checkpoint stores the weights and, in its safetensors metadata, the :class:`ModelConfig` needed to
rebuild the network and its pre-processing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from analysis.models import checkpoint
from hep2.vocabulary import CELL_PATTERNS

ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    # narrow ResNets (half the channels of ResNet-18/10): the CPU-budget models
    "resnet18_w32": ("resnet18", {"channels": (32, 64, 128, 256), "stem_width": 32}),
    "resnet10_w32": ("resnet10t", {"channels": (32, 64, 128, 256), "stem_width": 16}),
    # ViT-Tiny with 8-px patches, sized to the crop (img_size is filled in by create_model)
    "vit_tiny": ("vit_tiny_patch16_224", {"patch_size": 8}),
}
"""Our names → (timm name, extra kwargs). Any other timm name (``resnet18``, ``efficientnet_b0``,
``convnext_atto``, ``vit_small_patch16_224``...) is passed to timm as is."""


@dataclass(frozen=True)
class ModelConfig:
    """What is needed to rebuild a classifier and pre-process its input."""

    arch: str = "resnet18_w32"
    img_size: int = 64
    use_mask: bool = True
    num_classes: int = len(CELL_PATTERNS)
    classes: tuple[str, ...] = field(default_factory=lambda: tuple(p.value for p in CELL_PATTERNS))

    @property
    def in_chans(self) -> int:
        return 2 if self.use_mask else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "classes" in known:
            known["classes"] = tuple(known["classes"])
        return cls(**known)


def create_model(cfg: ModelConfig) -> nn.Module:
    """A randomly initialised timm classifier for ``cfg``."""
    name, kwargs = ALIASES.get(cfg.arch, (cfg.arch, {}))
    kwargs = dict(kwargs)
    if name.startswith(("vit_", "deit_", "eva_")):
        kwargs["img_size"] = cfg.img_size
    return timm.create_model(name, pretrained=False, num_classes=cfg.num_classes, in_chans=cfg.in_chans,
                             **kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


FAMILY = "cell-classifier"


def save_checkpoint(model: nn.Module, cfg: ModelConfig, path: str | Path, half: bool = False,
                    extra: dict[str, Any] | None = None) -> Path:
    """Weights in the one checkpoint format (optionally float16 to halve the file), config in the metadata."""
    return checkpoint.save(model, path, FAMILY, cfg.to_dict(), half=half, extra=extra)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the model saved by :func:`save_checkpoint` (float32, eval mode) and return its config."""
    state, config = checkpoint.read(path, FAMILY)
    cfg = ModelConfig.from_dict(config)
    return checkpoint.load_into(create_model(cfg), state, device), cfg
