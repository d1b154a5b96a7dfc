"""The one checkpoint format of every neural model family: safetensors weights (optionally float16) with
the family's format tag (``hep2-<family>/1``) and its architecture config as JSON in the metadata, and the
model card (``<stem>.json``) beside the file. Nothing in a checkpoint can run code when it is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

FORMAT_VERSION = 1


def format_tag(family: str) -> str:
    """``hep2-<family>/<version>``, e.g. ``hep2-cell-classifier/1``."""
    return f"hep2-{family}/{FORMAT_VERSION}"


def save(model: nn.Module, path: str | Path, family: str, config: dict[str, Any], half: bool = False,
         extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights (float16 when ``half``) with the family's tag and ``config`` in the metadata.

    ``extra`` values are stored JSON-encoded under their own keys (e.g. ``tta``, ``data_hash``).
    """
    state = {}
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu()
        state[key] = (t.half() if half and t.is_floating_point() else t).contiguous().clone()
    meta = {"format": format_tag(family), "config": json.dumps(config)}
    meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    path.chmod(0o644)  # safetensors writes 0600; checkpoints are shipped and shared
    return path


def read(path: str | Path, family: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, config) of a checkpoint of ``family``; refuses files of another family or format."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if meta.get("format") != format_tag(family) or "config" not in meta:
            raise ValueError(f"{path} is not a {format_tag(family)} checkpoint (format {meta.get('format')!r})")
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    return state, json.loads(meta["config"])


def load_into(model: nn.Module, state: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> nn.Module:
    """Load ``state`` into ``model`` (each tensor cast to the model's dtype), move it to ``device``, eval mode."""
    reference = model.state_dict()
    model.load_state_dict({k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()},
                          strict=True)
    return model.to(device).eval()


def model_card(weights: str | Path) -> dict[str, Any]:
    """The model card next to a checkpoint (``{}`` if there is none)."""
    card = Path(weights).with_suffix(".json")
    return json.loads(card.read_text()) if card.is_file() else {}
