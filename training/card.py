"""Model cards: the JSON file shipped beside a safetensors checkpoint (how it was made and how it did)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch


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


def hardware() -> dict[str, Any]:
    """The machine a run used (CPU model, core count, GPU name if any, torch version)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version()}


def write_card(path: str | Path, **fields: Any) -> Path:
    """Write a model card (adds date, hardware and git commit unless given)."""
    card = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "hardware": hardware(), "code": git_commit()}
    card.update(fields)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(card, indent=2) + "\n")
    return path
