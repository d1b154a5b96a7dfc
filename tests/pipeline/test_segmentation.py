"""Stage 2: classical and U-Net segmentation, field composition, metrics, GT from outlines, a tiny training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from analysis.build import default_segmenter
from analysis.models import DEFAULT_SEGMENTER as DEFAULT_WEIGHTS
from analysis.models.unet import DEFAULT_CONFIG, UnetSegmenter, build_model, save_weights, unet_promoted
from analysis.segmentation import ClassicalSegmenter, labels_from_maps, typical_area, watershed_split
from analysis.types import FieldImage
from hep2.synthetic import synthetic_field
from hep2.vocabulary import Pattern
from training.segmentation.compose import CellBank, compose_field, cut_out, distance_target, split_groups
from training.segmentation.metrics import score
from training.segmentation.train import loss_fn, to_input
from training.segmentation.truth import edges_to_instances, enclosed_regions

needs_weights = pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="no bundled segmenter weights")


def field_of(signal: np.ndarray, mask: np.ndarray | None = None) -> FieldImage:
    signal = signal.astype(np.float32)
    return FieldImage(signal, 8, "PNG", "grayscale", np.zeros(signal.shape, bool) if mask is None else mask)


def synthetic(cells: int = 20, seed: int = 1) -> FieldImage:
    rgb = synthetic_field(Pattern.HOMOGENEOUS, size=(320, 400), cells=cells, seed=seed)
    return field_of(rgb[..., 1] / 255.0)


def two_touching_disks() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:80, 0:120]
    a = (yy - 40) ** 2 + (xx - 40) ** 2 < 22**2
    b = (yy - 40) ** 2 + (xx - 78) ** 2 < 22**2
    return a, b


def test_watershed_splits_touching_nuclei() -> None:
    a, b = two_touching_disks()
    fg = a | b
    dist = ndimage.distance_transform_edt(fg)
    markers, _ = ndimage.label(dist > 0.7 * dist.max())
    labels = watershed_split(fg, dist / dist.max(), markers)
    assert labels.max() == 2
    assert score(np.where(a, 1, np.where(b, 2, 0)), labels).f1 == 1.0
    signal = np.where(fg, 0.6, 0.05) + np.random.default_rng(0).normal(0, 0.01, fg.shape)
    assert ClassicalSegmenter(min_area=20).segment(field_of(np.clip(signal, 0, 1))).max() == 2


def test_classical_recovers_synthetic_nuclei_and_is_pure() -> None:
    field = synthetic(cells=20)
    labels = ClassicalSegmenter().segment(field)
    assert labels.dtype == np.int32 and labels.shape == field.shape
    assert 14 <= labels.max() <= 24
    np.testing.assert_array_equal(labels, ClassicalSegmenter().segment(field))
    assert ClassicalSegmenter().segment(field_of(np.full((200, 200), 0.02))).max() == 0  # blank well


def punctate_field(seed: int = 0) -> tuple[FieldImage, np.ndarray]:
    """Centromere-like nuclei: a dim disc (0.08 over a 0.03 background) carrying 30 bright 2-px dots each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:240, 0:360]
    signal, truth = np.full(yy.shape, 0.03), np.zeros(yy.shape, np.int32)
    for label, (cy, cx) in enumerate([(70, 70), (70, 200), (170, 120), (170, 270)], start=1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 40**2
        truth[disc], signal[disc] = label, 0.08
        for _ in range(30):
            r, a = 34 * np.sqrt(rng.random()), 2 * np.pi * rng.random()
            signal[((yy - cy - r * np.sin(a)) ** 2 + (xx - cx - r * np.cos(a)) ** 2) < 2.2**2] = 0.5
    noisy = np.clip(ndimage.gaussian_filter(signal, 0.7) + rng.normal(0, 0.005, signal.shape), 0, 1)
    return field_of(noisy), truth


def test_punctate_nuclei_are_segmented_whole_not_as_dot_groups() -> None:
    field, truth = punctate_field()
    whole = score(truth, ClassicalSegmenter().segment(field))
    assert whole.f1 == 1.0 and whole.dice > 0.9
    shattered = score(truth, ClassicalSegmenter(dot_radius=0).segment(field))  # Otsu picks the dots
    assert shattered.f1 < 0.5


def test_typical_area_ignores_fragments() -> None:
    nuclei, fragments = [3000] * 20, [60] * 200
    assert typical_area(nuclei + fragments) == 3000
    assert np.median(nuclei + fragments) == 60
    assert typical_area([]) == 0.0


def test_labels_from_maps_and_annotation_exclusion() -> None:
    a, b = two_touching_disks()
    fg = (a | b).astype(np.float32)
    dist = distance_target(np.where(a, 1, np.where(b, 2, 0)).astype(np.int32))
    assert labels_from_maps(fg, dist).max() == 2
    annotation = np.zeros(fg.shape, bool)
    annotation[14:18, 70:90] = True  # touches disk b only
    labels = labels_from_maps(fg, dist, annotation)
    assert labels.max() == 1 and not labels[annotation].any()


TINY = {**DEFAULT_CONFIG, "encoder": "tu-lcnet_050", "decoder_channels": [16, 16, 8, 8, 8]}


def test_unet_segmenter_tiles_and_returns_labels(tmp_path) -> None:
    torch.manual_seed(0)
    weights = save_weights(build_model(TINY), tmp_path / "seg.safetensors", TINY)
    seg = UnetSegmenter(weights=weights, device="cpu", tile=64, overlap=16)
    field = synthetic(cells=8)
    prob, _dist = seg.predict(field.signal[:150, :230])  # 75 x 115 at working scale: 2 x 2 tiles
    assert prob.shape == (150, 230) and 0 <= prob.min() <= prob.max() <= 1
    labels = seg.segment(field_of(field.signal[:100, :120]))
    assert labels.dtype == np.int32 and labels.shape == (100, 120)


def test_default_segmenter_follows_the_promotion_gate(tmp_path) -> None:
    expected = UnetSegmenter if unet_promoted() else ClassicalSegmenter
    assert isinstance(default_segmenter(), expected)
    weights = tmp_path / "seg.safetensors"
    assert not unet_promoted(weights)
    weights.write_bytes(b"x")
    assert unet_promoted(weights)
    weights.with_suffix(".json").write_text('{"promoted": false}')
    assert not unet_promoted(weights)


@needs_weights
def test_bundled_unet_recovers_synthetic_nuclei() -> None:
    field = synthetic(cells=20)
    labels = UnetSegmenter(device="cpu").segment(field)
    assert 12 <= labels.max() <= 26


@pytest.mark.data
def test_real_crop_segmented_by_both(shared_data) -> None:
    from analysis.decode import decode_image

    folder = shared_data / "uobcs-edges"
    full = decode_image((folder / "10905_JL.png").read_bytes())
    truth = edges_to_instances(np.asarray(Image.open(folder / "10905_JL_edges.png")))
    box = (slice(300, 556), slice(400, 656))
    crop = field_of(full.signal[box])
    segmenters = [ClassicalSegmenter()] + ([UnetSegmenter(device="cpu")] if DEFAULT_WEIGHTS.exists() else [])
    for seg in segmenters:
        s = score(truth[box], seg.segment(crop))
        assert s.dice > 0.85 and s.f1 > 0.7, (seg.name, s.summary())


def test_edges_to_instances_handles_border_and_small_gaps() -> None:
    edges = np.zeros((100, 140), np.uint8)
    yy, xx = np.mgrid[0:100, 0:140]
    for cy, cx in ((50, 40), (50, 100), (-5, 70)):  # the third runs into the top border
        ring = np.abs(np.hypot(yy - cy, xx - cx) - 15) < 0.8
        edges[ring] = 255
    edges[49:51, 113:118] = 0  # a 2-px gap in the second outline
    labels = edges_to_instances(edges)
    assert labels.max() == 3
    areas = np.bincount(labels.ravel())[1:]
    assert all(a > 150 for a in areas)


def rings(shape: tuple[int, int], centres: list[tuple[int, int]], radius: float = 15) -> np.ndarray:
    """An edge map of circle outlines, 1-2 px wide."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    edges = np.zeros(shape, np.uint8)
    for cy, cx in centres:
        edges[np.abs(np.hypot(yy - cy, xx - cx) - radius) < 0.8] = 255
    return edges


def test_inner_strokes_do_not_split_a_nucleus() -> None:
    edges = rings((100, 200), [(50, 40), (50, 100), (50, 160)])
    edges |= rings((100, 200), [(50, 40)], radius=4)  # a closed scribble inside the first nucleus
    edges[35:66, 108] = 255  # a stroke across the second one, cutting off a cap
    assert enclosed_regions(edges).max() == 5
    labels = edges_to_instances(edges)
    assert labels.max() == 3
    assert labels[50, 40] == labels[50, 30] > 0 and labels[50, 100] == labels[50, 112] > 0


def test_touching_nuclei_and_stroke_holes() -> None:
    edges = rings((100, 200), [(50, 40), (50, 69), (50, 140)])  # the first two share a stretch of outline
    yy, xx = np.mgrid[0:100, 0:200]
    edges[np.abs(np.hypot(yy - 80, xx - 180) - 3) < 0.8] = 255  # a 5-px loop between strokes: not a nucleus
    edges[np.abs(np.hypot(yy + 10, xx - 100) - 14) < 0.8] = 255  # a nucleus cut by the top border: kept
    labels = edges_to_instances(edges)
    assert labels.max() == 4
    assert labels[50, 40] != labels[50, 69] and labels[80, 180] == 0 and labels[1, 100] > 0


def test_split_groups_is_group_wise() -> None:
    groups = np.repeat([f"g{i}" for i in range(10)], 5)
    train, val = split_groups(groups, 0.2)
    assert len(train) + len(val) == 50 and not set(groups[train]) & set(groups[val])


def tiny_bank(n: int = 6) -> CellBank:
    rng = np.random.default_rng(0)
    images, masks = [], []
    yy, xx = np.mgrid[0:60, 0:70]
    for _ in range(n):
        m = ((yy - 30) / rng.uniform(18, 26)) ** 2 + ((xx - 35) / rng.uniform(20, 30)) ** 2 < 1
        img = np.where(m, rng.uniform(30, 50) + rng.normal(0, 3, m.shape), 8 + rng.normal(0, 1, m.shape))
        cell, mask = cut_out(np.clip(img, 0, 255).astype(np.uint8), (m * 255).astype(np.uint8))
        images.append(cell)
        masks.append(mask)
    return CellBank(images, masks)


def test_composed_fields_have_matching_masks() -> None:
    bank = tiny_bank()
    for seed in range(3):
        signal, labels = compose_field(bank, (128, 128), np.random.default_rng(seed), empty_prob=0, dim_prob=0)
        assert signal.dtype == np.float32 and labels.dtype == np.int32 and 0 <= signal.min() <= signal.max() <= 1
        assert labels.max() >= 2 and set(np.unique(labels)) == set(range(labels.max() + 1))
        inner = ndimage.binary_erosion(labels > 0, iterations=2)
        outer = ~ndimage.binary_dilation(labels > 0, iterations=3)
        assert signal[inner].mean() > 2 * signal[outer].mean()  # cells where the mask says, not elsewhere
        dist = distance_target(labels)
        assert dist.max() <= 1 and (dist[labels == 0] == 0).all() and (dist[labels > 0] > 0).all()
    _empty, labels = compose_field(bank, (96, 96), np.random.default_rng(0), empty_prob=1.0)
    assert labels.max() == 0


def test_tiny_unet_training_run_lowers_the_loss() -> None:
    torch.manual_seed(0)
    bank = tiny_bank()
    rng = np.random.default_rng(0)
    fields = [compose_field(bank, (64, 64), rng, empty_prob=0, dim_prob=0) for _ in range(4)]
    x = to_input(np.stack([f[0] for f in fields]), DEFAULT_CONFIG)
    dist = torch.from_numpy(np.stack([distance_target(f[1]) for f in fields]))
    model = build_model(TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = loss_fn(model(x), (dist > 0).float(), dist)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses


def test_cli_evaluate_segmentation_classical(tmp_path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    yy, xx = np.mgrid[0:160, 0:200]
    image = np.zeros((160, 200, 3), np.uint8)
    edges = np.zeros((160, 200), np.uint8)
    for cy, cx in ((50, 50), (60, 140), (120, 90)):
        r = np.hypot(yy - cy, xx - cx)
        image[..., 1][r < 18] = 150
        edges[np.abs(r - 18) < 0.8] = 255
    Image.fromarray(image).save(tmp_path / "f1.png")
    Image.fromarray(edges).save(tmp_path / "f1_edges.png")
    out = tmp_path / "result.json"
    result = CliRunner().invoke(app, ["evaluate", "segmentation", "--data", str(tmp_path), "--json", str(out),
                                      "--segmenter", "classical"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["segmenters"]["classical"]["overall"]["object_f1"] == 1.0
    assert "classical" in result.output


def test_legacy_unet_checkpoint_converts_bit_for_bit(tmp_path) -> None:
    """A U-Net saved before the format tag (config only) converts with identical tensors and outputs."""
    from safetensors.torch import save_file

    from analysis.models.unet import load_model
    from training.checkpoint_convert import convert_legacy

    model = build_model(TINY).eval()
    legacy = tmp_path / "legacy.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(legacy),
              metadata={"config": json.dumps(TINY)})
    with pytest.raises(ValueError, match="not a hep2-segmenter/1"):
        load_model(legacy)
    report = convert_legacy(legacy, tmp_path / "new.safetensors", "segmenter")
    assert report["tensors_identical"] and report["config_identical"]
    loaded, config = load_model(tmp_path / "new.safetensors")
    assert config == {**DEFAULT_CONFIG, **TINY}
    x = torch.rand(1, 1, 64, 64)
    reference = build_model(TINY).eval()
    reference.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    with torch.inference_mode():
        assert torch.equal(loaded(x), reference(x))
    with pytest.raises(ValueError, match="already"):
        convert_legacy(tmp_path / "new.safetensors", tmp_path / "again.safetensors", "segmenter")
