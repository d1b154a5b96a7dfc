from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from training.experiment import ensemble_runs
from training.metrics import CLASS_NAMES


def _fake_run(root: Path, probs: np.ndarray, y: np.ndarray, folds: np.ndarray, with_fold_column: bool) -> Path:
    root.mkdir()
    groups = [f"g{f}" for f in folds]
    info = [{"fold": k, "test_groups": [f"g{k}"]} for k in sorted(set(folds.tolist()))]
    (root / "cv.json").write_text(json.dumps({"fold_info": info}))
    with (root / "oof.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "group", *(["fold"] if with_fold_column else []), "true", "pred", *CLASS_NAMES])
        for i, p in enumerate(probs):
            w.writerow([f"c{i}", groups[i], *([folds[i]] if with_fold_column else []), CLASS_NAMES[y[i]],
                        CLASS_NAMES[int(p.argmax())], *p])
    return root


def test_averaging_two_runs_fixes_what_each_gets_wrong(tmp_path: Path) -> None:
    y = np.array([0, 1, 2, 3, 4, 5, 0, 1])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    right = np.eye(6)[y] * 0.7 + 0.05
    wrong = np.eye(6)[(y + 1) % 6] * 0.4 + 0.1
    a = np.where(np.arange(8)[:, None] < 4, right, wrong)  # run a: right on fold 0 only
    b = np.where(np.arange(8)[:, None] < 4, wrong, right)  # run b: right on fold 1 only
    ra = _fake_run(tmp_path / "a", a, y, folds, with_fold_column=True)
    rb = _fake_run(tmp_path / "b", b, y, folds, with_fold_column=False)  # fold from cv.json test_groups
    result = ensemble_runs([ra, rb])
    assert result["member_pooled_mca"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert result["pooled"]["mca"] == 1.0 and result["cv_mean"]["mca"]["folds"] == [1.0, 1.0]
    rc = _fake_run(tmp_path / "c", a, y, folds[::-1], with_fold_column=True)
    with pytest.raises(ValueError, match="folds"):
        ensemble_runs([ra, rc])
    out = CliRunner().invoke(app, ["evaluate", "cv-ensemble", str(ra), str(rb), "--json",
                                           str(tmp_path / "e.json")])
    assert out.exit_code == 0 and "pooled MCA 1.0000" in out.output
