"""Where models run: device choice, mixed precision, and the one hardware probe every report uses."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


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


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """The machine a run used (CPU model, core count, torch threads, GPU name if any, versions)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "python": platform.python_version()}
