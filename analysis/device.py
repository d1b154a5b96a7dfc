"""Where models run: device choice, mixed precision, and the one hardware probe every report uses."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from hep2.settings import get_settings


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None → CUDA if available, else Apple MPS, else CPU."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


PRECISIONS = ("auto", "fp32", "bf16")
"""``auto``: bf16 (or fp16) autocast on CUDA, fp32 elsewhere; ``bf16``: bf16 autocast on any device (CPUs
with AVX512-BF16 / AMX run it natively); ``fp32``: no autocast."""


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The mixed-precision dtype on ``device`` for ``precision`` (see :data:`PRECISIONS`), None for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN uses it."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def cpu_has_amx() -> bool:
    """Whether oneDNN may use AMX bf16 tile units here (Intel Sapphire Rapids and later; not where
    ``ONEDNN_MAX_CPU_ISA`` caps it below AMX): it runs bf16 matrix products on them far faster than
    convolutions of a few pixels."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return "amx_bf16" in _cpu_flags() and (not cap or cap in ("ALL", "DEFAULT") or "AMX" in cap)


def default_precision(device: torch.device) -> str:
    """The cell classifier's precision for inference and for training with ``precision="auto"``: ``bf16`` on a
    CPU with native bf16 (inference 2.5× faster than fp32 at ≥ 99.5 % argmax agreement on the I3A cells;
    training 2.1× faster with the same grouped-CV accuracy; docs/performance.md), else ``auto`` (bf16/fp16
    on CUDA, fp32 on other CPUs). ``HEP2_CELL_PRECISION`` (fp32 | bf16 | auto) overrides it."""
    wanted = get_settings().cell_precision
    if wanted != "default":
        return wanted
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "auto"


def autocast(device: torch.device, precision: str = "auto") -> torch.autocast:
    """Autocast to :func:`autocast_dtype`, disabled when that is fp32."""
    dtype = autocast_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)


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
