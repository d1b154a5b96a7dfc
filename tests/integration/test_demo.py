"""`hep2 demo` on embedded defaults: no server, a real worker subprocess, a report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


def run_demo(tmp_path: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEP2_")}  # embedded defaults only
    state = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "hep2.cli", "demo", "--state-dir", str(state), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "report:" in proc.stdout
    return json.loads((state / "report.json").read_text())


def test_demo_registers_synthetic_fields(tmp_path: Path) -> None:
    report = run_demo(tmp_path)
    slides = report["slides"]
    assert len(slides) == 5 and all(s["synthetic"] and s["status"] == "received" for s in slides)
    assert all(s["image"].startswith("SYNTHETIC-") for s in slides)
    assert (tmp_path / "demo" / "hep2.sqlite3").exists()
    assert REPO_ROOT.joinpath("pyproject.toml").exists()


def test_demo_processes_an_input_folder(tmp_path: Path, shared_data: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("HOM-1.png", "NEG-1.png"):
        (folder / name).write_bytes((shared_data / "agh-fields" / name).read_bytes())
    report = run_demo(tmp_path, "--input", str(folder))
    assert [s["image"] for s in report["slides"]] == ["HOM-1.png", "NEG-1.png"]
    assert not any(s["synthetic"] for s in report["slides"])
