"""A training run's contenders (training.contenders): the fused family cross-validated on the run's folds,
its progress counting the texture folds, and a cancellation honoured between texture folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.models.fused import FusedCellClassifier
from tests.training.test_texture import FAST
from training.contenders import RunCancelled, RunData, RunProgress, cross_validate_contender, cv_fits, final_fit
from training.datasets import load_manifest
from training.retrain import RunParameters

FUSED = RunParameters(arch="resnet10_w32", img_size=32, epochs=1, max_steps=2, folds=3, tta=1, batch_size=16,
                      family="fused", texture_params=FAST)


class Recorder(RunProgress):
    """Progress kept in memory; cancels at texture fold ``cancel_at`` when given."""

    def __init__(self, cancel_at: int | None = None) -> None:
        super().__init__(run_id=0, total=cv_fits(FUSED, 3) + 1.1)
        self.calls: list[tuple[float, int | str, int | None]] = []
        self.cancel_at = cancel_at

    def report(self, done: float, fold: int | str, epoch: int | None = None) -> None:
        self.calls.append((done, fold, epoch))
        if epoch is None and fold == self.cancel_at:
            raise RunCancelled("cancelled")


@pytest.fixture
def data(tiny_i3a: Path) -> RunData:
    table = load_manifest(tiny_i3a)
    return RunData.of(table, table.data_hash(), 3, 0)


def test_fused_cv_reports_fused_folds_and_counts_texture_folds(data: RunData, tmp_path: Path) -> None:
    progress, reported = Recorder(), {}
    cv = cross_validate_contender(FUSED, data, progress, 0.0, lambda k, m: reported.setdefault(k, m))
    assert sorted(reported) == [0, 1, 2] and cv.fusion is not None
    assert [reported[k]["mca"] for k in range(3)] == [m["mca"] for m in cv.fold_metrics]
    assert all(set(m["members"]) == {"cnn", "texture"} for m in reported.values())
    assert np.allclose(cv.oof.sum(1), 1, atol=1e-4) and cv.oof.shape == (len(data.table), 6)
    texture = [c for c in progress.calls if c[2] is None]
    assert [c[1] for c in texture] == [0, 0, 1, 2] and texture[-1][0] == pytest.approx(cv_fits(FUSED, 3))
    assert all(a[0] <= b[0] for a, b in zip(progress.calls, progress.calls[1:], strict=False)), progress.calls

    model = final_fit(FUSED, data, progress, cv_fits(FUSED, 3), tmp_path, cv.fusion, {"name": "test"})
    fused = FusedCellClassifier(model, device="cpu")
    assert [m["family"] for m in fused.card["members"]] == ["cnn", "texture"] and fused.tta == 1
    assert np.allclose(fused.weights[0], [cv.fusion["final_cnn_weights"][c] for c in fused.card["classes"]])


def test_a_cancellation_is_honoured_between_texture_folds(data: RunData) -> None:
    progress = Recorder(cancel_at=1)
    with pytest.raises(RunCancelled):
        cross_validate_contender(FUSED, data, progress, 0.0)
    assert progress.calls[-1][1:] == (1, None)  # after texture fold 1, before fold 2
