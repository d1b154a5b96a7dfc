from __future__ import annotations

from pathlib import Path

import pytest

from analysis import device


def test_cpu_flags_come_from_the_flags_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """AMX (which turns on the dense small convolutions) and native bf16 are read from /proc/cpuinfo's flags."""
    cpuinfo = tmp_path / "cpuinfo"
    real_path = device.Path
    monkeypatch.setattr(device, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo" else real_path(p))
    cpuinfo.write_text("model name\t: X amx_bf16 in a name\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert device.cpu_has_native_bf16() and not device.cpu_has_amx()
    cpuinfo.write_text("flags\t\t: fpu avx512_bf16 amx_bf16 amx_tile\n")
    assert device.cpu_has_native_bf16() and device.cpu_has_amx()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # oneDNN told not to use AMX
    assert not device.cpu_has_amx()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX10_1_512_AMX")
    assert device.cpu_has_amx()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    cpuinfo.write_text("flags\t\t: fpu avx2\n")
    assert not device.cpu_has_native_bf16() and not device.cpu_has_amx()
    cpuinfo.unlink()
    assert not device.cpu_has_amx()
