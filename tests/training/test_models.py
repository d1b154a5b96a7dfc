from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.models.classifier import ModelConfig, create_model, load_checkpoint, save_checkpoint
from analysis.models.inference import average, predict_proba
from analysis.preprocess import dihedral
from training.ensemble import AveragingEnsemble, StackingEnsemble


@pytest.mark.parametrize("arch", ["resnet18_w32", "resnet10_w32", "efficientnet_b0", "convnext_atto",
                                  "vit_tiny"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_factory_builds_one_and_two_channel_models(arch: str, use_mask: bool) -> None:
    cfg = ModelConfig(arch=arch, img_size=32, use_mask=use_mask)
    model = create_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.rand(2, cfg.in_chans, 32, 32))
    assert out.shape == (2, 6)


def test_checkpoint_round_trip_full_and_half_precision(tmp_path: Path) -> None:
    cfg = ModelConfig(arch="resnet10_w32", img_size=32)
    model = create_model(cfg).eval()
    x = torch.randint(0, 256, (4, 2, 32, 32), dtype=torch.uint8)
    ref = predict_proba(model, x)
    loaded, cfg2 = load_checkpoint(save_checkpoint(model, cfg, tmp_path / "m.safetensors"))
    assert cfg2 == cfg and np.allclose(predict_proba(loaded, x), ref, atol=1e-6)
    half = save_checkpoint(model, cfg, tmp_path / "h.safetensors", half=True)
    assert half.stat().st_size < (tmp_path / "m.safetensors").stat().st_size * 0.6
    assert np.allclose(predict_proba(load_checkpoint(half)[0], x), ref, atol=2e-2)
    (tmp_path / "bad.safetensors").write_bytes(b"")
    with pytest.raises(Exception):  # noqa: B017 - any load error is fine for a non-checkpoint
        load_checkpoint(tmp_path / "bad.safetensors")


def test_tta_is_the_mean_over_the_eight_dihedral_views() -> None:
    torch.manual_seed(0)
    model = create_model(ModelConfig(arch="resnet10_w32", img_size=32)).eval()
    x = torch.randint(0, 256, (3, 2, 32, 32), dtype=torch.uint8)
    manual = np.mean([predict_proba(model, dihedral(x, k)) for k in range(8)], axis=0)
    assert np.allclose(predict_proba(model, x, tta=8), manual, atol=1e-5)
    assert not np.allclose(predict_proba(model, x, tta=1), manual, atol=1e-5)
    assert np.allclose(predict_proba(model, x, tta=8).sum(1), 1, atol=1e-5)


def test_averaging_and_stacking_ensembles() -> None:
    a, b = np.eye(6)[[0, 1]], np.eye(6)[[2, 1]]
    assert np.allclose(average([a, b])[0], (np.eye(6)[0] + np.eye(6)[2]) / 2)
    assert np.allclose(average([a, b], weights=[3, 1])[0, 0], 0.75)
    models = [create_model(ModelConfig(arch="resnet10_w32", img_size=32)).eval() for _ in range(2)]
    x = torch.randint(0, 256, (2, 2, 32, 32), dtype=torch.uint8)
    ens = AveragingEnsemble(models, tta=1).predict_proba(x)
    assert np.allclose(ens, (predict_proba(models[0], x) + predict_proba(models[1], x)) / 2, atol=1e-6)
    # stacking: member 1 is noise, member 2 knows the label; classes 0..4 only (5 unseen)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)
    noise = rng.dirichlet(np.ones(6), 300)
    good = 0.6 * np.eye(6)[y] + 0.4 * rng.dirichlet(np.ones(6), 300)
    stack = StackingEnsemble(6).fit([noise, good], y)
    probs = stack.predict_proba([noise, good])
    assert probs.shape == (300, 6) and np.allclose(probs[:, 5], 0)
    assert (probs.argmax(1) == y).mean() > 0.95
