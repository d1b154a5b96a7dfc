"""`hep2 demo` on embedded defaults: no server, a real worker subprocess, a report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.demo import MARKER, prepare_state_dir

pytestmark = pytest.mark.integration


def run_demo(tmp_path: Path, *args: str, via_env: bool = False) -> dict:
    keep = {"HEP2_CELL_MODEL_PATH", "HEP2_SHARED_DATA"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEP2_") or k in keep}  # embedded defaults
    state = tmp_path / "demo"
    if via_env:
        env["HEP2_STATE_DIR"] = str(state)
    option = [] if via_env else ["--state-dir", str(state)]
    proc = subprocess.run([sys.executable, "-m", "cli.main", "demo", *option, *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "report:" in proc.stdout
    # the command that opens the dashboard on exactly this state, and a key to log in with
    assert f"HEP2_STATE_DIR={state.resolve()} hep2 api" in proc.stdout
    assert "reviewer key (shown once): hep2_" in proc.stdout
    report = json.loads((state / "report.json").read_text())
    assert "key" not in report and (state / MARKER).is_file()
    return report


def test_demo_analyses_synthetic_fields(tmp_path: Path) -> None:
    report = run_demo(tmp_path, via_env=True)  # HEP2_STATE_DIR is honoured
    slides = report["slides"]
    assert report["synthetic"] and len(slides) == 5
    assert all(s["image"].startswith("SYNTHETIC-") for s in slides)
    assert all(s["status"] in {"done", "needs_review"} and s["cells"] > 5 for s in slides), slides
    assert all(s["intensity"] in {"negative", "intermediate", "positive"} and s["pattern"] for s in slides)
    assert all((tmp_path / "demo" / s["overlay"]).stat().st_size > 1000 for s in slides)
    assert "SYNTHETIC" in (tmp_path / "demo" / "report.html").read_text()
    assert (tmp_path / "demo" / "hep2.sqlite3").exists()


def test_demo_processes_an_input_folder(tmp_path: Path, shared_data: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("HOM-1.png", "NEG-1.png"):
        (folder / name).write_bytes((shared_data / "agh-fields" / name).read_bytes())
    report = run_demo(tmp_path, "--input", str(folder))
    assert [s["image"] for s in report["slides"]] == ["HOM-1.png", "NEG-1.png"]
    assert not report["synthetic"]
    assert all(s["status"] in {"done", "needs_review"} for s in report["slides"]), report["slides"]


def test_demo_never_deletes_a_folder_it_did_not_create(tmp_path: Path) -> None:
    theirs = tmp_path / "lab-state"
    theirs.mkdir()
    (theirs / "hep2.sqlite3").write_text("a lab's own database")
    with pytest.raises(SystemExit, match="not created by hep2 demo"):
        prepare_state_dir(theirs)
    assert (theirs / "hep2.sqlite3").read_text() == "a lab's own database"
    ours = tmp_path / "demo"
    prepare_state_dir(ours)  # a new folder: created and marked
    (ours / "old-report.json").write_text("{}")
    prepare_state_dir(ours)  # the demo's own: wiped, marked again
    assert sorted(p.name for p in ours.iterdir()) == [MARKER]
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_state_dir(empty)
    assert (empty / MARKER).is_file()
def test_demo_input_folder_with_sidecars_gives_a_specimen_report(tmp_path: Path) -> None:
    """``NAME.json`` beside ``NAME.png`` is uploaded as its sidecar: a dilution series of one accession becomes
    one report; ``hep2 report`` prints it from the same embedded state."""
    from hep2.synthetic import synthetic_png
    from hep2.vocabulary import Pattern

    folder = tmp_path / "in"
    folder.mkdir()
    for i, (dilution, brightness) in enumerate([("1:80", 170.0), ("1:160", 120.0), ("1:320", 0.0)]):
        name = f"SYNTHETIC-demo-acc-{i}"
        (folder / f"{name}.png").write_bytes(synthetic_png(Pattern.HOMOGENEOUS, seed=i, size=(320, 400), cells=10,
                                                           brightness=brightness))
        (folder / f"{name}.json").write_text(json.dumps({"specimen_id": "DEMO-ACC-1", "patient_id": "PSEUDO-demo-1",
                                                          "dilution": dilution, "well": f"A{i + 1}"}))
    report = run_demo(tmp_path, "--input", str(folder))
    assert len(report["slides"]) == 3 and len(report["reports"]) == 1
    specimen = report["reports"][0]
    assert specimen["accession"] == "DEMO-ACC-1" and len(specimen["images"]) == 3
    assert specimen["result"] == "positive" and specimen["titer"]["text"] == "1:160", specimen["titer"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEP2_")}
    env["HEP2_STATE_DIR"] = str(tmp_path / "demo")
    proc = subprocess.run([sys.executable, "-m", "cli.main", "report", "DEMO-ACC-1", "--format", "hl7"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ORU^R01" in proc.stdout and "^1^:^160" in proc.stdout and "DEMO-ACC-1" in proc.stdout
    missing = subprocess.run([sys.executable, "-m", "cli.main", "report", "NOPE"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "no specimen" in missing.stderr
