from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis.models import DEFAULT_CELL_MODEL as DEFAULT_MODEL
from analysis.models.checkpoint import model_card
from analysis.models.inference import CellClassifier
from hep2.vocabulary import CELL_PATTERNS
from training.datasets import load_manifest
from training.metrics import mean_class_accuracy


def test_bundled_model_is_shipped_with_its_card() -> None:
    assert DEFAULT_MODEL.is_file(), f"the production cell classifier is missing: {DEFAULT_MODEL}"
    assert DEFAULT_MODEL.stat().st_size < 8 * 2**20  # small enough to commit
    card = model_card(DEFAULT_MODEL)
    assert card["weights"] == DEFAULT_MODEL.name and len(card["data_hash"]) == 64
    assert card["protocol"] == "grouped" and card["command"].startswith("hep2 train cells")
    folds = card["cv_mean"]["mca"]["folds"]
    assert len(folds) == card["folds"] and np.isclose(np.mean(folds), card["cv_mean"]["mca"]["mean"])
    assert card["code"]["commit"] and card["hardware"] and card["date"]


def test_bundled_model_predicts_six_class_probabilities(cell_factory) -> None:
    clf = CellClassifier()
    assert clf.classes == CELL_PATTERNS and clf.model.training is False
    assert clf.config.in_chans in (1, 2) and clf.tta in (1, 8)
    rng = np.random.default_rng(0)
    crops = [cell_factory(rng, h, w, i % 6) for i, (h, w) in enumerate([(60, 70), (90, 55), (111, 111)])]
    crops.append((crops[0][0], None))  # no mask: the whole crop is the cell
    probs = clf.predict(crops)
    assert probs.shape == (4, 6) and probs.dtype == np.float32
    assert (probs >= 0).all() and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert clf.predict([]).shape == (0, 6)
    assert len(clf.predict_patterns(crops[:2])) == 2


@pytest.mark.data
def test_bundled_model_recognises_real_cells(i3a_dir: Path, i3a_rows: list[dict[str, str]]) -> None:
    """A wiring check (pre-processing, channel order, class order), not a benchmark: the model has seen
    these cells, so anything near chance (1/6) means the inference path is broken."""
    table = load_manifest(i3a_dir).subset(range(0, len(i3a_rows), 40))
    clf = CellClassifier(tta=1)
    crops = [table.read_crop(i) for i in range(len(table))]
    pred = clf.predict(crops).argmax(1)
    assert mean_class_accuracy(table.labels, pred) > 0.6
    card = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    assert card["n_cells"] == len(i3a_rows)


def test_inference_models_have_their_batchnorm_folded_into_the_convolutions(i3a_dir: Path) -> None:
    """The classifier runs BatchNorm-folded copies (fold_batchnorm): no BatchNorm module left, and in fp32 the
    probabilities of the checkpoint as trained (max difference ~1e-6 on real cells)."""
    import torch

    from analysis.models.classifier import load_checkpoint
    from analysis.models.inference import predict_proba

    clf = CellClassifier(DEFAULT_MODEL, device="cpu", precision="fp32")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in clf.model.modules())
    trained, config = load_checkpoint(DEFAULT_MODEL)
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in trained.modules())
    x = load_manifest(i3a_dir).subset(range(48)).load(config.img_size, config.use_mask)
    folded = predict_proba(clf.model, x, tta=8, precision="fp32")
    reference = predict_proba(trained, x, tta=8, precision="fp32")
    assert np.abs(folded - reference).max() < 1e-4
    assert (folded.argmax(1) == reference.argmax(1)).all()


def _random_resnet(img_size: int = 48):
    import torch

    from analysis.models.classifier import ModelConfig, create_model
    from analysis.models.inference import fold_batchnorm

    torch.manual_seed(0)
    model = create_model(ModelConfig(arch="resnet18_w32", img_size=img_size)).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return fold_batchnorm(model)


def test_forward_sub_batches_give_the_probabilities_of_one_pass() -> None:
    """predict_proba's sub-batches (forward_images; CPU_FORWARD_IMAGES by default on the CPU) change how the
    views are grouped, not the probabilities: the images are independent in an inference model."""
    from analysis.models.inference import predict_proba

    model = _random_resnet()
    x = np.random.default_rng(0).integers(0, 256, (7, 2, 48, 48), dtype=np.uint8)
    whole = predict_proba(model, x, tta=8, precision="fp32", forward_images=10**6)
    for images in (None, 24, 13):
        np.testing.assert_allclose(predict_proba(model, x, tta=8, precision="fp32", forward_images=images),
                                   whole, atol=1e-6)


def test_dense_small_convs_are_the_same_convolutions() -> None:
    """dense_small_convs replaces the k×k convolutions of the 3×3 and 2×2 maps (48-px input) by matrix
    products with the same outputs (fp32: up to summation order)."""
    import copy

    import torch

    from analysis.models.inference import DenseConv2d, dense_small_convs

    model = _random_resnet()
    dense = dense_small_convs(copy.deepcopy(model), (2, 48, 48))
    replaced = {name for name, m in dense.named_modules() if isinstance(m, DenseConv2d)}
    assert replaced == {"layer3.0.conv2", "layer3.1.conv1", "layer3.1.conv2", "layer4.0.conv1", "layer4.0.conv2",
                        "layer4.1.conv1", "layer4.1.conv2"}
    x = torch.rand(5, 2, 48, 48).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        np.testing.assert_allclose(dense(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)


def test_bf16_inference_copies_have_bf16_weights_and_refuse_fp32() -> None:
    """On the CPU a bf16 classifier keeps bf16 weights (cast once, not in every pass); such a copy runs only
    under bf16 autocast, and its probabilities stay those of the fp32 model (argmax, ~1e-2)."""
    import torch

    from analysis.models.inference import predict_proba

    bf16 = CellClassifier(DEFAULT_MODEL, device="cpu", precision="bf16")
    fp32 = CellClassifier(DEFAULT_MODEL, device="cpu", precision="fp32")
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in fp32.model.parameters()} == {torch.float32}
    x = np.random.default_rng(1).integers(0, 256, (6, 2, 48, 48), dtype=np.uint8)
    with pytest.raises(ValueError, match="autocast"):
        predict_proba(bf16.model, x, tta=8, precision="fp32")
    p16, p32 = bf16.predict_array(x), fp32.predict_array(x)
    assert np.abs(p16 - p32).max() < 0.05 and np.allclose(p16.sum(1), 1, atol=1e-4)
