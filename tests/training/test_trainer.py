from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.models.classifier import ModelConfig, create_model, load_checkpoint, save_checkpoint
from analysis.models.inference import predict_proba
from training.datasets import load_manifest
from training.trainer import JsonlLogger, TrainConfig, class_weights, fit

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _loss(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    probs = predict_proba(model, x)
    return float(-np.log(probs[np.arange(len(y)), y] + 1e-8).mean())


def test_class_weights_balance_the_classes() -> None:
    y = np.array([0] * 90 + [5] * 10)
    w = class_weights(y, 6)
    assert np.isclose(w[0] * 90, w[5] * 10) and w[1] == 0


def test_a_few_steps_on_real_cells_lower_the_loss_and_checkpoint_round_trips(tiny_i3a: Path,
                                                                              tmp_path: Path) -> None:
    torch.set_num_threads(2)
    table = load_manifest(tiny_i3a)
    model_cfg = ModelConfig(arch="resnet10_w32", img_size=32, use_mask=True)
    x, y = table.load(32, True), table.labels
    cfg = TrainConfig(epochs=8, batch_size=24, lr=3e-3, max_angle=0, jitter=0, label_smoothing=0,
                      patience=0, progress=False, seed=1)
    torch.manual_seed(cfg.seed)
    before = _loss(create_model(model_cfg), x, y)  # same seed: the initial weights fit() starts from
    log = JsonlLogger(tmp_path / "log.jsonl", fold=0)
    res = fit(x, y, model_cfg, cfg, x[::4], y[::4], log=log)
    after = _loss(res.model, x, y)
    assert after < before * 0.8, (before, after)
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in lines if r["event"] == "epoch"]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "end" and len(epochs) == 8
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert all("val_mca" in r for r in epochs)
    assert res.best_epoch == 8 and res.best_val_mca == epochs[-1]["val_mca"]  # patience 0: the last epoch
    ckpt = save_checkpoint(res.model, model_cfg, tmp_path / "m.safetensors")
    loaded, _ = load_checkpoint(ckpt)
    assert np.allclose(predict_proba(loaded, x), predict_proba(res.model, x), atol=1e-5)


def test_max_steps_and_seeds_make_runs_reproducible(tiny_i3a: Path) -> None:
    torch.set_num_threads(2)
    table = load_manifest(tiny_i3a)
    x, y = table.load(32, False), table.labels
    model_cfg = ModelConfig(arch="resnet10_w32", img_size=32, use_mask=False)
    cfg = TrainConfig(epochs=3, batch_size=16, max_steps=4, progress=False, seed=7)
    runs = [fit(x, y, model_cfg, cfg) for _ in range(2)]
    assert runs[0].history[-1]["steps"] == 4 and len(runs[0].history) == 1
    assert np.allclose(predict_proba(runs[0].model, x), predict_proba(runs[1].model, x), atol=1e-6)


class _StopAt(JsonlLogger):
    """Raises when epoch ``stop`` is logged: a fit killed after saving the epoch before it."""

    def __init__(self, stop: int) -> None:
        super().__init__(None)
        self.stop = stop

    def log(self, event: str, **fields: object) -> None:
        super().log(event, **fields)
        if event == "epoch" and fields.get("epoch") == self.stop:
            raise KeyboardInterrupt("stopped")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_stopped_fit_resumes_from_its_last_epoch_to_the_same_weights(tiny_i3a: Path, tmp_path: Path,
                                                                       precision: str) -> None:
    table = load_manifest(tiny_i3a)
    model_cfg = ModelConfig(arch="resnet10_w32", img_size=32, use_mask=True)
    x, y = table.load(32, True), table.labels
    cfg = TrainConfig(epochs=3, batch_size=32, progress=False, seed=3, patience=0, precision=precision,
                      channels_last=precision == "bf16", checkpoint=str(tmp_path / "state.pt"))
    with pytest.raises(KeyboardInterrupt):
        fit(x, y, model_cfg, cfg, x[::4], y[::4], log=_StopAt(2))  # epoch 1 saved, killed in epoch 2
    resumed_log = JsonlLogger(None)
    resumed = fit(x, y, model_cfg, cfg, x[::4], y[::4], log=resumed_log)
    assert [r["epoch"] for r in resumed_log.records if r["event"] == "resume"] == [1]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    straight = fit(x, y, model_cfg, TrainConfig(**{**cfg.to_dict(), "checkpoint": None}), x[::4], y[::4])
    for (name, a), b in zip(resumed.model.state_dict().items(), straight.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other_log = JsonlLogger(None)
    fit(x[:-3], y[:-3], model_cfg, cfg, log=other_log)  # other data: never resumes that state
    assert not [r for r in other_log.records if r["event"] == "resume"]
    assert len([r for r in other_log.records if r["event"] == "epoch"]) == 3
