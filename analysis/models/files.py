"""The files a cell classifier is made of, and its one identity hash (torch-free: the registry uses it).

A CNN is one checkpoint (``.safetensors``) with its model card beside it (``<name>.json``). A fused model
(``hep2-cell-ensemble/1``, :mod:`analysis.models.fused`) is a JSON naming its member files beside it: CNN
checkpoints (each with its card) and texture models (``.json`` with a booster file it names).

The identity of a classifier is the sha256 of its file when it is one file, else the sha256 of its files'
hashes, one per line, in :func:`classifier_files` order (the JSON, then each member): the pipeline records
it with every result (``analysis.analyze``) and the registry stores it as the version's ``sha256``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def combined_sha256(hashes: Sequence[str]) -> str:
    """One identity for a model made of files with these sha256s (one file: its own hash)."""
    return hashes[0] if len(hashes) == 1 else hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def is_ensemble(path: Path) -> bool:
    """Whether ``path`` names a fused model (the loader's rule: ``.json`` = ensemble)."""
    return Path(path).suffix == ".json"


def _members(path: Path) -> list[dict]:
    return list(json.loads(Path(path).read_text())["members"])


def classifier_files(path: Path) -> list[Path]:
    """The files whose hashes identify the classifier: a checkpoint alone, or the fused JSON then each member."""
    path = Path(path)
    if not is_ensemble(path):
        return [path]
    return [path, *(path.with_name(m["file"]) for m in _members(path))]


def artifact_files(path: Path) -> list[Path]:
    """Every file loading the classifier reads: :func:`classifier_files` plus each CNN member's model card
    (when present) and each texture member's booster."""
    path = Path(path)
    if not is_ensemble(path):
        return [path]
    files = [path]
    for member in _members(path):
        member_path = path.with_name(member["file"])
        files.append(member_path)
        if member["family"] == "texture":
            files.append(member_path.with_name(json.loads(member_path.read_text())["booster_file"]))
        elif member_path.with_suffix(".json").is_file():
            files.append(member_path.with_suffix(".json"))
    return files
