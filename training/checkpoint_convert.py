"""Convert a checkpoint written before the one checkpoint format (:mod:`analysis.models.checkpoint`) had a
format tag: the U-Net segmenters of sessions 1-4 stored only ``config`` in their metadata.

The tensors are copied bit for bit; the conversion refuses to write unless every tensor of the new file
equals the old one exactly and the configs match, so outputs are identical by construction.
``python -m training.checkpoint_convert OLD NEW --family segmenter`` prints the proof.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from analysis.models import checkpoint


def convert_legacy(old: str | Path, new: str | Path, family: str) -> dict[str, Any]:
    """Write ``old`` as a tagged ``family`` checkpoint at ``new``; returns what was checked."""
    with safe_open(str(old), framework="pt", device="cpu") as f:
        meta = dict(f.metadata() or {})
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    if "config" not in meta:
        raise ValueError(f"{old} has no config metadata: not a hep2 checkpoint")
    if meta.get("format") == checkpoint.format_tag(family):
        raise ValueError(f"{old} is already a {checkpoint.format_tag(family)} checkpoint")
    meta["format"] = checkpoint.format_tag(family)
    Path(new).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(new), metadata=meta)
    Path(new).chmod(0o644)
    converted, config = checkpoint.read(new, family)
    same = sorted(converted) == sorted(state) and all(
        converted[k].dtype == state[k].dtype and torch.equal(converted[k], state[k]) for k in state)
    if not same or config != json.loads(meta["config"]):
        Path(new).unlink()
        raise RuntimeError(f"conversion of {old} changed its tensors or config: nothing written")
    return {"old": str(old), "new": str(new), "format": meta["format"], "tensors": len(state),
            "tensors_identical": True, "config_identical": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--family", required=True, choices=["segmenter", "cell-classifier"])
    args = parser.parse_args()
    print(json.dumps(convert_legacy(args.old, args.new, args.family), indent=2))


if __name__ == "__main__":
    main()
