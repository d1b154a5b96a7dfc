"""``hep2 bench``'s classifier batch sweep: the JSON shape on a tiny model (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hep2.synthetic import synthetic_png
from hep2.vocabulary import Pattern
from workers import bench


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A randomly initialised small classifier on the CPU, without TTA."""
    from analysis.models.classifier import ModelConfig, create_model, save_checkpoint
    from analysis.models.inference import CellClassifier

    config = ModelConfig(arch="resnet10_w32", img_size=32)
    path = save_checkpoint(create_model(config), config, tmp_path_factory.mktemp("w") / "tiny.safetensors")
    return CellClassifier(path, device="cpu", tta=1, precision="fp32")


def test_batch_sweep_reports_a_positive_rate_per_batch_size(tiny_classifier: Any) -> None:
    crops = np.random.default_rng(0).integers(0, 256, (5, tiny_classifier.config.in_chans, 32, 32), np.uint8)
    sweep = json.loads(json.dumps(bench.batch_sweep(tiny_classifier, crops, [3, 8], repeats=1)))
    assert sweep["device"] == "cpu" and sweep["autocast"] is None and sweep["tta"] == 1
    assert sweep["per_slide_batch"] == 3 and sweep["unique_crops"] == 5 and sweep["weights"] == ["tiny.safetensors"]
    assert [(b["batch_size"], b["calls"], b["cells"]) for b in sweep["batches"]] == [(3, 3, 9), (8, 1, 8)]
    assert all(b["cells_per_s"] > 0 and b["seconds"] > 0 for b in sweep["batches"])
    assert sweep["speedup_largest_vs_per_slide"] > 0
    assert tiny_classifier.batch_size == 256  # restored


def test_sweep_without_i3a_cuts_crops_from_the_bench_fields(tiny_classifier: Any, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from analysis.analyze import Models
    from analysis.segmentation import ClassicalSegmenter

    monkeypatch.setenv("HEP2_SHARED_DATA", str(tmp_path))  # no i3a-task1 there
    monkeypatch.setattr(bench, "SWEEP_BATCHES", (8,))
    monkeypatch.setattr(bench, "DEFAULT_SLIDE_CELLS", 4)
    models = Models(segmenter=ClassicalSegmenter(), classifier=tiny_classifier)
    fields = [("f.png", synthetic_png(Pattern.SPECKLED, seed=1, size=(256, 320), cells=12))]
    sweep = bench.run_batch_sweep(models, lambda: fields, None)
    assert "cut from 1 bench fields" in sweep["crops"] and sweep["per_slide_batch_from"].startswith("default")
    assert [b["batch_size"] for b in sweep["batches"]] == [4, 8]
    assert all(b["cells_per_s"] > 0 for b in sweep["batches"])


def test_sweep_of_the_fused_default_times_its_cnn_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped default is a fused model; its batch sweep is that of its CNN (the texture member has no
    batching effect) — it failed with AttributeError before."""
    from analysis.analyze import Models
    from analysis.models.fused import DEFAULT_FUSED_MODEL, FusedCellClassifier, cnn_of
    from analysis.segmentation import ClassicalSegmenter

    monkeypatch.setenv("HEP2_SHARED_DATA", str(tmp_path))  # no i3a-task1 there: crops cut from the field
    monkeypatch.setattr(bench, "SWEEP_BATCHES", (8,))
    monkeypatch.setattr(bench, "DEFAULT_SLIDE_CELLS", 4)
    fused = FusedCellClassifier(DEFAULT_FUSED_MODEL, device="cpu")
    models = Models(segmenter=ClassicalSegmenter(), classifier=fused)
    fields = [("f.png", synthetic_png(Pattern.SPECKLED, seed=1, size=(256, 320), cells=12))]
    sweep = bench.run_batch_sweep(models, lambda: fields, None)
    assert sweep["weights"] == [p.name for p in cnn_of(fused).paths] and sweep["tta"] == fused.tta
    assert [b["batch_size"] for b in sweep["batches"]] == [4, 8] and all(b["cells_per_s"] > 0 for b in sweep["batches"])


def test_stage_stats_reports_median_p95_and_mean_per_stage_and_total() -> None:
    timings = [{"decode": 10.0, "segment": 100.0}, {"decode": 20.0, "segment": 300.0}, {"decode": 30.0}]
    stats = bench.stage_stats(timings)
    assert list(stats) == ["decode", "segment", "total"]
    assert stats["decode"] == {"median": 20.0, "p95": 29.0, "mean": 20.0}
    assert stats["segment"]["median"] == 100.0  # a stage missing from a field counts 0 there
    assert stats["total"]["median"] == 110.0 and stats["total"]["mean"] == round((110 + 320 + 30) / 3, 1)


def test_cpu_hosts_run_one_single_threaded_process_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from workers.process import default_processes, threads_per_process

    cores = len(os.sched_getaffinity(0))
    assert default_processes(cuda=True) == 1
    assert default_processes(cuda=False) == cores and threads_per_process(cores) == 1
    assert threads_per_process(1) == cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})  # e.g. a container pinned to one core
    assert default_processes(cuda=False) == 1 and threads_per_process(1) == 1


def test_each_end_to_end_run_is_compared_with_the_models_alone_runs_around_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Rounds: alone 4.0, e2e 3.0, alone 2.0 (ratio 1.0), e2e 2.4, alone 4.0 (0.8), e2e 3.5, alone 3.0 (1.0):
    the ratio is the median round's, with that round's end-to-end run and its CPU against the mean of its
    two brackets' models CPU."""
    alone = iter([(4.0, 400.0), (2.0, 600.0), (4.0, 400.0), (3.0, 500.0)])
    through = iter([3.0, 2.4, 3.5])

    def fake_alone(fields: Any, models: Any, processes: int) -> dict[str, Any]:
        fps, cpu = next(alone)
        return {"fields_per_s": fps, "cpu_ms_per_field": {"models": cpu}}

    def fake_end_to_end(fields: Any, log_dir: Path, processes: int, shared_worker: bool) -> dict[str, Any]:
        fps = next(through)
        return {"fields_per_s": fps, "cpu_ms_per_field": {bench.ANALYSING_WORKER: 1000.0 / fps}}

    monkeypatch.setattr(bench, "models_alone", fake_alone)
    monkeypatch.setattr(bench, "end_to_end", fake_end_to_end)
    out = bench.bracketed_rounds([], None, 2, 3, tmp_path)
    assert [r["ratio"] for r in out["rounds"]] == [1.0, 0.8, 1.0]
    assert out["ratio"] == 1.0 and out["end_to_end"]["fields_per_s"] == 3.0  # the median of 0.8, 1.0, 1.0: round 1
    assert out["median_round"] == 1 and out["rounds"][0]["models_alone_cpu_ms_per_field"] == 500.0
    assert out["analysing_cpu_ratio"] == round(500.0 / (1000.0 / 3.0), 3)
    assert out["models_alone"]["fields_per_s"] == 4.0 and out["models_alone_fields_per_s"] == [4.0, 2.0, 4.0, 3.0]


def test_models_share_is_the_stage_time_over_the_processes_time() -> None:
    timings = [{"decode": 100.0, "segment": 300.0}, {"decode": 200.0, "segment": 400.0}]
    assert bench.models_share(timings, processes=2, seconds=0.5) == 1.0
    assert bench.models_share(timings, processes=2, seconds=1.0) == 0.5
