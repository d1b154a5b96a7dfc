"""The image-quality gate (analysis/quality.py): unreadable fields are rejected or sent to review, never
called negative; a negative call needs evidence of cells (the real AGH NEG fields keep theirs)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from analysis.analyze import Models, analyze_field
from analysis.config import PipelineConfig
from analysis.decode import decode_image
from analysis.quality import QualityConfig, assess_field, count_nuclei, measure, noise_sigma
from analysis.segmentation import ClassicalSegmenter
from analysis.types import FieldImage, InvalidImageError
from hep2.synthetic import synthetic_field, synthetic_png
from hep2.vocabulary import Pattern
from tests.pipeline.helpers_stages import RecordingClassifier

SIZE = (384, 512)


def png(green: np.ndarray) -> bytes:
    rgb = np.zeros((*green.shape, 3), np.uint8)
    rgb[..., 1] = np.clip(np.round(green), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def _models() -> Models:
    return Models(segmenter=ClassicalSegmenter(), classifier=RecordingClassifier(Pattern.HOMOGENEOUS, 0.9))


def _blurred(sigma: float) -> np.ndarray:
    green = synthetic_field(Pattern.HOMOGENEOUS, size=SIZE, cells=25, seed=3)[..., 1].astype(float)
    rng = np.random.default_rng(1)
    return ndimage.gaussian_filter(green, sigma) + rng.normal(0, 2.0, SIZE)


rng = np.random.default_rng(0)
BAD_FIELDS = {
    "black": np.zeros(SIZE),
    "black_with_read_noise": np.clip(rng.normal(0.3, 0.5, SIZE), 0, 255),
    "blank_flat_grey": np.full(SIZE, 40.0),
    "uniform_noise": rng.uniform(0, 255, SIZE),
    "camera_noise_only": synthetic_field(Pattern.HOMOGENEOUS, size=SIZE, brightness=0.0, residual=0.0)[..., 1],
    "saturated_white": np.full(SIZE, 255.0),
    "mostly_saturated": np.where(rng.uniform(size=SIZE) < 0.7, 255.0, 120.0),
    "blurred": _blurred(8.0),
    "cell_free_gradient": np.linspace(5.0, 12.0, SIZE[1])[None, :] + rng.normal(0, 1.0, SIZE),
}


@pytest.mark.parametrize("name", sorted(BAD_FIELDS))
def test_unreadable_fields_are_never_called_negative(name: str) -> None:
    """Each generated bad field is rejected with a readable reason, or read and sent to review, never negative."""
    try:
        result = analyze_field(png(BAD_FIELDS[name]), _models())
    except InvalidImageError as exc:
        assert str(exc).startswith("image quality:"), exc
        return
    assert result.specimen.pattern != "negative", (name, result.specimen)
    assert result.specimen.needs_review and result.specimen.reasons


@pytest.mark.parametrize(("name", "reason"), [("black", "black field"), ("blank_flat_grey", "flat field"),
                                              ("uniform_noise", "looks like noise"),
                                              ("camera_noise_only", "looks like noise"),
                                              ("saturated_white", "overexposed"), ("mostly_saturated", "overexposed"),
                                              ("blurred", "out of focus")])
def test_rejection_names_the_problem(name: str, reason: str) -> None:
    with pytest.raises(InvalidImageError, match=reason):
        assess_field(decode_image(png(BAD_FIELDS[name])))


def test_field_covered_by_annotations_is_rejected_with_that_reason() -> None:
    """Flat rows with a step between neighbours everywhere (a test chart, not a fluorescence field): the
    decoder masks all of it as burned-in overlay; the gate says so instead of measuring an empty remainder."""
    stripes = np.repeat(np.where(np.arange(SIZE[0] // 8) % 2, 200.0, 20.0), 8)[:, None] * np.ones((1, SIZE[1]))
    image = decode_image(png(stripes))
    assert image.annotation_mask.all()
    report = measure(image)
    assert report.annotation_fraction == 1.0 and report.saturated_fraction == 0.0  # not NaN: nothing to count
    with pytest.raises(InvalidImageError, match=r"annotations .* cover 100% of the field"):
        assess_field(image)
    with pytest.raises(InvalidImageError, match="annotations"):
        analyze_field(png(stripes), _models())


def test_cell_free_field_with_a_negative_index_goes_to_review_not_negative() -> None:
    result = analyze_field(png(BAD_FIELDS["cell_free_gradient"]), _models())
    assert result.intensity.intensity_class == "negative"
    assert result.specimen.pattern == "other" and result.specimen.icap is None and result.specimen.needs_review
    assert any("no evidence of cells" in r for r in result.specimen.reasons)
    assert result.quality is not None and result.quality.nuclei is not None and result.quality.nuclei < 10


def test_partly_saturated_field_is_read_but_reviewed() -> None:
    green = synthetic_field(Pattern.HOMOGENEOUS, size=SIZE, cells=25, seed=2, brightness=400.0)[..., 1]
    report = assess_field(decode_image(png(green)))
    assert report.saturated_fraction > 0.05
    assert any("overexposed" in r for r in report.review_reasons)
    result = analyze_field(png(green), _models())
    assert result.specimen.needs_review and any("overexposed" in r for r in result.specimen.reasons)


def test_mild_blur_is_not_rejected_and_sharp_fields_pass() -> None:
    sharp = measure(decode_image(png(_blurred(0.0))))
    assert sharp.focus is not None and sharp.focus > 0.1
    assert measure(decode_image(png(_blurred(8.0)))).focus < QualityConfig().min_focus


def test_synthetic_negative_with_faint_nuclei_stays_negative_with_its_cells() -> None:
    clf = RecordingClassifier()
    result = analyze_field(synthetic_png(Pattern.HOMOGENEOUS, brightness=0.0, size=SIZE, cells=25, noise_scale=0.3),
                           Models(segmenter=ClassicalSegmenter(), classifier=clf))
    assert result.specimen.pattern == "negative" and result.specimen.icap == "AC-0"
    assert not result.specimen.needs_review and clf.calls == []
    assert result.quality.nuclei >= 10
    assert any("cells seen" in r for r in result.specimen.reasons)
    assert result.to_dict()["quality"]["nuclei"] == result.quality.nuclei


def test_the_gate_can_be_configured_and_switched_off() -> None:
    cfg = PipelineConfig.model_validate({"quality": {"enabled": False}})
    result = analyze_field(png(BAD_FIELDS["black"]), _models(), config=cfg)  # read as before: no gate
    assert result.quality is not None and result.quality.p99 == 0


def test_noise_sigma_recovers_known_noise() -> None:
    field = np.random.default_rng(5).normal(50, 3.0, (300, 300)) + np.linspace(0, 40, 300)[None, :]
    assert noise_sigma(field) == pytest.approx(3.0, rel=0.1)


def _agh(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / "agh-fields" / "labels.csv").open() as f:
        return list(csv.DictReader(f))


def test_real_negative_fields_stay_negative_with_their_cells(shared_data: Path) -> None:
    """The three AGH NEG images (raw mean ~4.6/255, 0 cells segmented): negative, with cells counted."""
    for row in (r for r in _agh(shared_data) if r["code"] == "NEG"):
        clf = RecordingClassifier()
        data = (shared_data / "agh-fields" / row["image"]).read_bytes()
        result = analyze_field(data, Models(segmenter=ClassicalSegmenter(), classifier=clf))
        assert result.specimen.pattern == "negative" and not result.specimen.needs_review, row["image"]
        assert result.quality.nuclei >= 50, (row["image"], result.quality.nuclei)  # ~80-130 cells visible


def test_real_positive_fields_pass_the_gate(shared_data: Path) -> None:
    """No AGH field is rejected or held for quality (docs/pipeline.md lists their measurements)."""
    for row in _agh(shared_data):
        field = decode_image((shared_data / "agh-fields" / row["image"]).read_bytes())
        report = assess_field(field)
        assert report.review_reasons == [], row["image"]
        if row["code"] != "NEG":
            assert count_nuclei(field) >= 50, row["image"]


def _count_nuclei_float64(image: FieldImage, cfg: QualityConfig) -> int:
    """count_nuclei as it was until session 7 (float64 grey levels and Gaussians), the reference for its
    float32 version."""
    from analysis.quality import _dog_gain, _max_filter
    from analysis.segmentation import dilate_cross, gaussian_filter
    grey = image.filled.astype(np.float64) * 255.0
    h, w = grey.shape[0] // 2 * 2, grey.shape[1] // 2 * 2
    half = (grey[0:h:2, 0:w:2] + grey[0:h:2, 1:w:2] + grey[1:h:2, 0:w:2] + grey[1:h:2, 1:w:2]) / 4
    sigma = noise_sigma(half)
    score = np.full(half.shape, -np.inf)
    for s in (v / 2 for v in cfg.nucleus_sigmas):
        dog = gaussian_filter(half, s) - gaussian_filter(half, 1.6 * s)
        score = np.maximum(score, dog / (sigma * np.sqrt(_dog_gain(s))))
    window = max(3, round(cfg.min_separation / 2)) | 1
    peaks = (score == _max_filter(score, window)) & (score >= cfg.nucleus_snr)
    margin = max(1, round(max(cfg.nucleus_sigmas)))
    peaks[:margin], peaks[-margin:], peaks[:, :margin], peaks[:, -margin:] = False, False, False, False
    if image.annotation_mask.any():
        peaks &= ~dilate_cross(image.annotation_mask[:h:2, :w:2], margin)
    return int(peaks.sum())


def test_float32_nucleus_count_equals_the_float64_count(shared_data: Path) -> None:
    """The gate counts in float32 (~3× faster); on every AGH field and on synthetic negative, faint and empty
    fields the count is the float64 code's, and so are the gate's measurements."""
    cfg = QualityConfig()
    fields = [decode_image((shared_data / "agh-fields" / row["image"]).read_bytes()) for row in _agh(shared_data)]
    fields += [decode_image(synthetic_png(pattern, brightness=brightness, size=SIZE, cells=25, noise_scale=0.3,
                                          seed=seed))
               for seed, (pattern, brightness) in enumerate([(Pattern.HOMOGENEOUS, 0.0), (Pattern.SPECKLED, 0.3),
                                                             (Pattern.CENTROMERE, 1.0)])]
    fields += [decode_image(png(np.full((400, 400), 12, np.uint8)))]
    fast = [(measure(field), count_nuclei(field, cfg)) for field in fields]
    from analysis import quality  # the float64 measurements: grey levels and Gaussians as until session 7
    from analysis.segmentation import gaussian_filter
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quality, "_grey", lambda image: image.filled.astype(np.float64) * 255.0)
        patch.setattr(quality, "gaussian_filter32", gaussian_filter)
        for field, (report, count) in zip(fields, fast, strict=True):
            assert count == _count_nuclei_float64(field, cfg)
            assert measure(field) == report


def test_fft_differences_of_gaussians_equal_separable_filters() -> None:
    """count_nuclei's differences of Gaussians by FFT (reflect padding) = the separable float32 filters within
    float32 rounding, on a large field and on one too small for the padding (the separable fallback)."""
    from analysis.quality import _dogs, _std
    from analysis.segmentation import gaussian_filter32
    rng = np.random.default_rng(5)
    for shape in ((241, 333), (40, 52)):
        image = (rng.random(shape) * 50 + np.linspace(0, 80, shape[1])[None]).astype(np.float32)
        scales = (4.0, 6.0, 9.0)
        for s, got in zip(scales, _dogs(image, scales), strict=True):
            want = gaussian_filter32(image, s) - gaussian_filter32(image, 1.6 * s)
            assert got.dtype == np.float32 and got.shape == shape
            np.testing.assert_allclose(got, want, atol=1e-4 * float(np.abs(image).max()))
        assert _std(image) == pytest.approx(float(np.std(image, dtype=np.float64)), rel=1e-12)


def test_saturated_share_equals_mean() -> None:
    from analysis.quality import _saturated
    rng = np.random.default_rng(9)
    signal = np.minimum(rng.random((60, 70)).astype(np.float32) * 1.2, 1.0)
    for free in (rng.random(signal.shape) < 0.9, np.ones(signal.shape, bool)):
        assert _saturated(signal, free, int(free.sum())) == float(np.mean(signal[free] >= 0.999))


def test_float64_difference_equals_numpy() -> None:
    from analysis.quality import _diff64
    rng = np.random.default_rng(10)
    a, b = (rng.normal(50, 30, (37, 41)).astype(np.float32) for _ in range(2))
    got = _diff64(a, b)
    assert got.dtype == np.float64 and np.array_equal(got, a.astype(np.float64) - b.astype(np.float64))
