"""Model cards: the JSON file shipped beside a safetensors checkpoint (how it was made and how it did)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analysis.device import hardware
from hep2.jsonio import write_json


def git_commit(repo: Path | None = None) -> dict[str, Any]:
    """``{"commit": sha | "uncommitted", "dirty": bool, "note": ...}`` of the code that trained a model."""
    cwd = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "training"], cwd=cwd,
                                    capture_output=True, text=True).stdout.strip())
        return {"commit": sha, "dirty": dirty,
                "note": "training/ had uncommitted changes" if dirty else ""}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "uncommitted", "dirty": True,
                "note": "trained before the repository's first commit; the code is the training/ package "
                        "of the commit that added this card"}


def write_card(path: str | Path, **fields: Any) -> Path:
    """Write a model card (adds date, hardware and git commit unless given)."""
    card = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "hardware": hardware(), "code": git_commit()}
    card.update(fields)
    return write_json(path, card)
