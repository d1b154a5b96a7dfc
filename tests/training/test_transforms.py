from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.preprocess import dihedral, fit_square, percentile_stretch, prepare_crop
from training.transforms import augment, gaussian_blur, jitter_mask, random_dihedral, rotate


def test_percentile_stretch_maps_1st_and_99th_percentiles_to_0_and_1() -> None:
    img = np.arange(1000, dtype=np.float32).reshape(20, 50)
    out = percentile_stretch(img)
    lo, hi = np.percentile(img, [1, 99])
    assert out.min() == 0 and out.max() == 1
    assert np.isclose(out.flat[500], (500 - lo) / (hi - lo))
    assert (out[img <= lo] == 0).all() and (out[img >= hi] == 1).all()
    assert not percentile_stretch(np.full((5, 5), 7)).any()  # flat image: zeros, no division by zero


def test_percentile_stretch_accepts_rgb_and_16_bit() -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1, 1, 1] = 200  # green (FITC) signal
    assert percentile_stretch(rgb, 0, 100)[1, 1] == 1
    assert percentile_stretch(np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000, 0, 100).max() == 1


def test_fit_square_keeps_aspect_ratio_and_pads_with_zeros() -> None:
    out = fit_square(np.ones((20, 40), np.float32), 32)
    assert out.shape == (32, 32)
    rows = np.flatnonzero(out.any(axis=1))
    assert len(rows) == 16 and rows[0] == 8  # 20x40 → 16x32, centred vertically
    assert out.any(axis=0).all()
    tall = fit_square(np.ones((60, 30), np.float32), 48)
    assert np.flatnonzero(tall.any(axis=0)).size == 24


def test_prepare_crop_mask_channel() -> None:
    img = np.random.default_rng(0).integers(0, 60, (30, 40)).astype(np.uint8)
    mask = np.zeros((30, 40), bool)
    mask[5:25, 10:30] = True
    x = prepare_crop(img, mask, 32, use_mask=True)
    assert x.shape == (2, 32, 32) and x.dtype == np.uint8
    assert set(np.unique(x[1])) == {0, 255}
    assert abs((x[1] > 0).mean() - mask.mean() * (24 * 32) / (32 * 32)) < 0.05  # area scales with resize
    assert prepare_crop(img, mask, 32, use_mask=False).shape == (1, 32, 32)
    no_mask = prepare_crop(img, None, 32, use_mask=True)
    assert (no_mask[1] > 0).sum() == 24 * 32  # the whole (resized) crop counts as the cell
    with pytest.raises(ValueError, match="mask shape"):
        prepare_crop(img, mask[:10], 32, use_mask=True)


def test_dihedral_group_has_eight_distinct_invertible_elements() -> None:
    sq = torch.arange(16.0).reshape(1, 1, 4, 4)
    views = [dihedral(sq, k) for k in range(8)]
    assert torch.equal(views[0], sq)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    for k in range(8):  # every element has an inverse in the group
        assert any(torch.equal(dihedral(views[k], j), sq) for j in range(8))
    with pytest.raises(ValueError):
        dihedral(sq, 8)


def test_random_dihedral_applies_a_group_element_per_sample() -> None:
    batch = torch.arange(5 * 2 * 16, dtype=torch.uint8).reshape(5, 2, 4, 4)
    out = random_dihedral(batch, torch.Generator().manual_seed(1))
    for i in range(5):
        assert any(torch.equal(out[i], dihedral(batch[i], k)) for k in range(8))


def test_rotate_by_90_degrees_matches_rot90_in_the_interior() -> None:
    x = torch.rand(2, 1, 17, 17)
    assert torch.allclose(rotate(x, torch.zeros(2), mask_channel=False), x, atol=1e-5)
    r = rotate(x, torch.full((2,), 90.0), mask_channel=False)
    inner = r[..., 2:-2, 2:-2]
    refs = [torch.rot90(x, k, dims=(-2, -1))[..., 2:-2, 2:-2] for k in (1, -1)]
    assert any(torch.allclose(inner, ref, atol=1e-4) for ref in refs)


def test_augment_returns_unit_range_floats_and_a_binary_mask() -> None:
    x = torch.randint(0, 256, (16, 2, 32, 32), dtype=torch.uint8)
    x[:, 1] = (x[:, 1] > 127).to(torch.uint8) * 255
    y = augment(x, mask_channel=True, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1
    assert set(torch.unique(y[:, 1]).tolist()) <= {0.0, 1.0}
    assert not torch.allclose(y[:, 0], x[:, 0].float() / 255)  # something was augmented


def test_field_augmentation_keeps_range_and_binary_mask_and_changes_the_batch() -> None:
    x = torch.zeros((32, 2, 32, 32), dtype=torch.uint8)
    x[:, :, 8:24, 8:24] = 255
    plain = augment(x, True, max_angle=0, jitter=0, generator=torch.Generator().manual_seed(1))
    field = augment(x, True, max_angle=0, jitter=0, generator=torch.Generator().manual_seed(1), field_aug=1.0)
    assert field.min() >= 0 and field.max() <= 1
    assert set(torch.unique(field[:, 1]).tolist()) <= {0.0, 1.0}
    assert not torch.allclose(plain[:, 0], field[:, 0])
    areas = field[:, 1].sum(dim=(1, 2))
    assert len(torch.unique(areas)) > 3  # zoom and mask error vary per sample


def test_gaussian_blur_is_identity_at_sigma_zero_and_keeps_the_mean() -> None:
    x = torch.rand(3, 20, 20)
    same = gaussian_blur(x, torch.zeros(3))
    assert torch.allclose(same, x, atol=1e-5)
    blurred = gaussian_blur(x, torch.tensor([0.0, 1.0, 2.0]))
    assert torch.allclose(blurred[0], x[0], atol=1e-5)
    assert blurred[2].std() < blurred[1].std() < x[1].std()
    assert torch.allclose(blurred.mean(dim=(1, 2)), x.mean(dim=(1, 2)), atol=0.02)


def test_jitter_mask_grows_shrinks_or_keeps_each_mask() -> None:
    m = torch.zeros(3, 12, 12)
    m[:, 4:8, 4:8] = 1
    out = jitter_mask(m, torch.tensor([1.0, -1.0, 0.0]))
    assert out[0].sum() == 36 and out[1].sum() == 4 and out[2].sum() == 16
