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
