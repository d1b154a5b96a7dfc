"""Image-quality gate: is this field fit to be read, and is there evidence of cells behind a negative call?

Two steps, both plain functions of the decoded field (thresholds in :class:`QualityConfig`, the ``quality``
section of :class:`analysis.config.PipelineConfig`; how each default was chosen: docs/pipeline.md,
"Quality gate").

1. :func:`assess_field`, before segmentation. Measures, in 8-bit grey levels (annotation pixels replaced by
   the field's median):

   * ``annotation_fraction``: the share of the field under burned-in annotations. Above
     ``max_annotation_fraction`` the field is **rejected** (too little left to read; a field wholly covered
     left nothing to measure and used to be called "black").
   * ``p99`` / ``dynamic_range`` (99.5th − 0.5th percentile): a black field (nothing above a few grey
     levels) or a flat one (no contrast at all) is **rejected**: a failed scan, a shutter that did not
     open, an empty frame.
   * ``noise``: the camera noise sigma (robust Immerkær estimate, :func:`noise_sigma`);
     ``structure``: the standard deviation of the field smoothed at nucleus scale (Gaussian σ = 2 px),
     divided by what white noise of that sigma would leave after the same smoothing. Pure noise gives ~1,
     a field with cells (even the faint nuclei of a negative well) many times more. Below
     ``min_structure`` the field is **rejected** as noise.
   * ``saturated_fraction``: the share of pixels at full scale. Above ``reject_saturated_fraction`` the
     field is **rejected** (overexposed); above ``review_saturated_fraction`` it is read but sent to
     **review** (the fluorescence index and the cell crops are clipped).
   * ``focus``: fine-detail energy (difference of Gaussians σ 1 − 2.5 px) over coarse-detail energy
     (σ 2.5 − 8 px), each with the energy the measured noise alone would put there subtracted. A blurred
     field loses the fine band first. Below ``min_focus`` the field is **rejected** (out of focus).

2. :func:`count_nuclei`, on every field that passed: evidence that cells are there. Nucleus-sized bright
   blobs are counted on a denoised field (2 × 2 average, difference of Gaussians at nucleus scales), each
   response measured in units of what the camera noise alone would give, so the faint nuclei of a negative
   well (a few grey levels above background) count as readily as bright ones, and noise does not. A
   negative call with fewer than ``min_nuclei`` blobs is not signed out as negative: it goes to review
   (:func:`negative_needs_cells`). When the scanner sends a counterstain (DAPI) channel this is where it
   belongs; the decoder keeps only the FITC channel today.

A rejection raises :class:`analysis.types.InvalidImageError` with a readable reason (the service marks the
slide ``rejected``); a review reason is returned for the specimen stage to add.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

import cv2
import numpy as np
from pydantic import BaseModel, Field
from scipy import fft as sfft
from scipy import ndimage

from analysis import stats
from analysis.segmentation import dilate_cross, gaussian_filter32, gaussian_kernel
from analysis.types import FieldImage, InvalidImageError


class QualityConfig(BaseModel):
    """Quality-gate thresholds (grey levels are 8-bit full scale; docs/pipeline.md, "Quality gate")."""

    enabled: bool = Field(True, description="Off: no quality checks (not recommended).")
    min_p99: float = Field(2.0, ge=0, description="99th percentile below this (grey levels): black field, rejected.")
    min_dynamic_range: float = Field(2.0, ge=0, description="99.5th - 0.5th percentile below this: flat field, "
                                                            "rejected.")
    min_structure: float = Field(1.5, ge=0, description="Smoothed std / white-noise expectation below this: "
                                                        "noise, rejected.")
    reject_saturated_fraction: float = Field(0.5, ge=0, le=1, description="Share of full-scale pixels above "
                                                                          "this: overexposed, rejected.")
    review_saturated_fraction: float = Field(0.05, ge=0, le=1, description="Share of full-scale pixels above "
                                                                           "this: review.")
    min_focus: float = Field(0.02, ge=0, description="Fine/coarse detail energy below this: out of focus, rejected.")
    max_annotation_fraction: float = Field(0.5, ge=0, le=1, description="Share of the field covered by burned-in "
                                           "annotations (scale bars, text) above this: rejected, too little left "
                                           "to read.")
    min_nuclei: int = Field(10, ge=0, description="A negative call needs at least this many detected nuclei.")
    nucleus_sigmas: tuple[float, ...] = Field((8.0, 12.0, 18.0), min_length=1, description="Blob scales (px, "
                                              "Gaussian sigma of the difference of Gaussians).")
    nucleus_snr: float = Field(8.0, gt=0, description="A nucleus: a blob response this many times the noise's.")
    min_separation: int = Field(26, ge=2, description="Two blobs closer than this (px) count once.")


@dataclass
class QualityReport:
    """What the gate measured (8-bit grey levels) and what it decided."""

    p99: float
    dynamic_range: float
    noise: float
    structure: float
    saturated_fraction: float
    focus: float | None
    annotation_fraction: float = 0.0
    """Share of the field's pixels under burned-in annotations (the decoder's mask), excluded from every
    measurement."""
    height: int = 0
    width: int = 0
    """The field's size in pixels (the frame of cell coordinates)."""
    nuclei: int | None = None
    """Nuclei found by :func:`count_nuclei` (None: not counted, i.e. the field was not negative)."""
    review_reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def noise_sigma(grey: np.ndarray) -> float:
    """Camera-noise sigma (grey levels), Immerkær's estimator made robust: the median absolute response of
    the 3×3 kernel [[1,-2,1],[-2,4,-2],[1,-2,1]] (blind to planes and ramps, so to most of the image) /
    (0.6745 × 6). Floor: 0.15 (8-bit quantisation leaves at least that much)."""
    depth = cv2.CV_32F if grey.dtype == np.float32 else cv2.CV_64F  # float32 grey levels: float32 responses
    response = cv2.filter2D(grey, depth, _IMMERKAER)[1:-1, 1:-1]  # = ndimage.convolve (symmetric kernel)
    return max(float(stats.median(np.abs(response))) / (0.6745 * 6.0), 0.15)  # stats.median = np.median


_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)


def _white_noise_gain(filt: np.ndarray) -> float:
    """Sum of squared filter weights: white noise of unit variance has this variance after the filter."""
    return float(np.sum(filt**2))


def _impulse(sigmas: tuple[float, float] | float, size: int = 65) -> np.ndarray:
    """The 2-D impulse response of a Gaussian (one sigma) or a difference of Gaussians (two)."""
    size = max(size, int(8 * (sigmas[1] if isinstance(sigmas, tuple) else sigmas)) | 1)
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    if isinstance(sigmas, tuple):
        return ndimage.gaussian_filter(delta, sigmas[0]) - ndimage.gaussian_filter(delta, sigmas[1])
    return ndimage.gaussian_filter(delta, sigmas)


SMOOTH_SIGMA = 2.0
FINE, COARSE = (1.0, 2.5), (2.5, 8.0)
_GAIN_SMOOTH = _white_noise_gain(_impulse(SMOOTH_SIGMA))
_GAIN_FINE = _white_noise_gain(_impulse(FINE))
_GAIN_COARSE = _white_noise_gain(_impulse(COARSE))


def _grey(image: FieldImage) -> np.ndarray:
    return image.grey_levels  # = image.filled * np.float32(255), once per field (read-only)


def measure(image: FieldImage) -> QualityReport:
    """The gate's measurements of one field (no decision)."""
    grey = _grey(image)
    free_mask = ~image.annotation_mask
    n_free = int(np.count_nonzero(free_mask))
    free = grey.ravel() if n_free in (0, grey.size) else grey[free_mask]  # (no copy without annotations)
    p_lo, p99, p_hi = stats.percentile(free, [0.5, 99.0, 99.5])  # = np.percentile
    sigma = noise_sigma(grey)
    small = grey[::2, ::2] if min(grey.shape) >= 512 else grey  # the band energies, at half the cost
    smooth_std = _std(gaussian_filter32(grey, SMOOTH_SIGMA))
    structure = smooth_std / (sigma * np.sqrt(_GAIN_SMOOTH))
    focus = _focus(small, sigma)
    saturated = _saturated(image.signal, free_mask, n_free) if n_free else 0.0  # no free pixel: nothing to count
    return QualityReport(p99=round(float(p99), 3), dynamic_range=round(float(p_hi - p_lo), 3),
                         noise=round(float(sigma), 3), structure=round(float(structure), 3),
                         saturated_fraction=round(saturated, 5),
                         focus=None if focus is None else round(float(focus), 4),
                         annotation_fraction=round(1.0 - n_free / grey.size, 5) if grey.size else 0.0,
                         height=int(grey.shape[0]), width=int(grey.shape[1]))


def _saturated(signal: np.ndarray, free_mask: np.ndarray, n_free: int) -> float:
    """``np.mean(signal[free_mask] >= 0.999)``, the share of full-scale pixels outside the annotations, by one
    count (the same float: an exact count over the same divisor); ``n_free`` > 0."""
    full = signal >= 0.999
    full &= free_mask
    return np.count_nonzero(full) / n_free


def _focus(grey: np.ndarray, sigma: float) -> float | None:
    """Fine-band energy / coarse-band energy, noise energy subtracted from each (None: no coarse detail)."""
    grey = np.ascontiguousarray(grey, np.float32)  # one copy of a strided view, not one per filter
    g1, g25, g8 = (gaussian_filter32(grey, s) for s in (FINE[0], FINE[1], COARSE[1]))
    fine = max(_std(_diff64(g1, g25)) ** 2 - sigma**2 * _GAIN_FINE, 0.0)
    coarse = max(_std(_diff64(g25, g8)) ** 2 - sigma**2 * _GAIN_COARSE, 0.0)
    return fine / coarse if coarse > 0 else None


def _diff64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a.astype(np.float64) - b.astype(np.float64)`` of two float32 images in one OpenCV pass (exact in
    float64 either way)."""
    return cv2.subtract(a, b, dtype=cv2.CV_64F)


def _std(image: np.ndarray) -> float:
    """``np.std(image, dtype=np.float64)`` of a 2-D float image by OpenCV (one pass, float64 sums; the same
    within float64 rounding)."""
    if image.ndim != 2 or not image.size:
        return float(np.std(image, dtype=np.float64))
    return float(cv2.meanStdDev(image)[1][0, 0])


def assess_field(image: FieldImage, config: QualityConfig | None = None) -> QualityReport:
    """Measure the field; raise :class:`InvalidImageError` when it cannot be read, else return the report
    (with review reasons, e.g. partial saturation)."""
    cfg = config or QualityConfig()
    report = measure(image)
    if not cfg.enabled:
        return report
    if report.annotation_fraction > cfg.max_annotation_fraction:
        raise InvalidImageError(f"image quality: burned-in annotations (scale bars, text) cover "
                                f"{report.annotation_fraction:.0%} of the field (> {cfg.max_annotation_fraction:.0%})"
                                ": too little of the field is left to read; upload the scanner's field without "
                                "overlays")
    if report.p99 < cfg.min_p99:
        raise InvalidImageError(f"image quality: black field (99th percentile {report.p99:.1f} grey levels < "
                                f"{cfg.min_p99}): no light reached the camera; rescan the well")
    if report.saturated_fraction > cfg.reject_saturated_fraction:
        raise InvalidImageError(f"image quality: overexposed ({report.saturated_fraction:.0%} of pixels at full "
                                f"scale > {cfg.reject_saturated_fraction:.0%}); rescan with a shorter exposure")
    if report.dynamic_range < cfg.min_dynamic_range:
        raise InvalidImageError(f"image quality: flat field without contrast (range {report.dynamic_range:.1f} "
                                f"grey levels < {cfg.min_dynamic_range}): no cells can be seen; rescan the well")
    if report.structure < cfg.min_structure:
        raise InvalidImageError(f"image quality: the field looks like noise (structure {report.structure:.1f} < "
                                f"{cfg.min_structure}, noise sigma {report.noise:.1f} grey levels): no cells can "
                                "be seen; rescan the well")
    if report.focus is not None and report.focus < cfg.min_focus:
        raise InvalidImageError(f"image quality: out of focus (fine/coarse detail {report.focus:.3f} < "
                                f"{cfg.min_focus}); refocus and rescan the well")
    if report.saturated_fraction > cfg.review_saturated_fraction:
        report.review_reasons.append(
            f"partly overexposed ({report.saturated_fraction:.1%} of pixels at full scale > "
            f"{cfg.review_saturated_fraction:.0%}): fluorescence index and cell crops are clipped")
    return report


def count_nuclei(image: FieldImage, config: QualityConfig | None = None) -> int:
    """Nucleus-sized bright blobs in the field, however faint (see the module docstring).

    On the field averaged 2 × 2 (noise halves): difference-of-Gaussians responses at the scales
    ``nucleus_sigmas`` (full-resolution px; DoG σ and 1.6 σ), each divided by the response white noise of the
    measured sigma would give, maximum over scales; a blob is a local maximum (window ``min_separation`` px)
    of at least ``nucleus_snr``, away from the border (2 σ) and from burned-in annotations.
    """
    cfg = config or QualityConfig()
    grey = _grey(image)
    h, w = grey.shape[0] // 2 * 2, grey.shape[1] // 2 * 2
    half = (grey[0:h:2, 0:w:2] + grey[0:h:2, 1:w:2] + grey[1:h:2, 0:w:2] + grey[1:h:2, 1:w:2]) / 4  # 2 × 2 mean
    sigma = noise_sigma(half)
    half32 = half.astype(np.float32)  # a count, not a measurement: float32 Gaussians (~3× faster, same counts)
    score = np.full(half.shape, -np.inf, np.float32)
    scales = tuple(v / 2 for v in cfg.nucleus_sigmas)
    for s, dog in zip(scales, _dogs(half32, scales), strict=True):
        np.maximum(score, dog * np.float32(1.0 / (sigma * np.sqrt(_dog_gain(s)))), out=score)
    window = max(3, round(cfg.min_separation / 2)) | 1
    peaks = (score == _max_filter(score, window)) & (score >= cfg.nucleus_snr)
    margin = max(1, round(max(cfg.nucleus_sigmas)))  # 2 σ of the largest scale, in half-resolution px
    peaks[:margin], peaks[-margin:], peaks[:, :margin], peaks[:, -margin:] = False, False, False, False
    if image.annotation_mask.any():
        peaks &= ~dilate_cross(image.annotation_mask[:h:2, :w:2], margin)
    return int(peaks.sum())


def _dogs(image: np.ndarray, scales: tuple[float, ...]) -> list[np.ndarray]:
    """``gaussian_filter32(image, s) - gaussian_filter32(image, 1.6 s)`` for each scale ``s`` (float32), by FFT:
    the image reflect-padded by the largest kernel's radius (``reflect`` border, as the separable filters) and
    each difference one product with the kernels' transfer function. The same linear filters, within float32
    rounding (the counts equal on every AGH and uobcs-edges field); for the large scales of
    :func:`count_nuclei` several times fewer operations than the separable passes."""
    pad = max(len(gaussian_kernel(1.6 * s)) // 2 for s in scales)
    h, w = image.shape
    big_h, big_w = sfft.next_fast_len(h + 2 * pad, real=True), sfft.next_fast_len(w + 2 * pad, real=True)
    if max(big_h - h - pad, big_w - w - pad) >= min(h, w):  # one reflection must cover every pad
        return [gaussian_filter32(image, s) - gaussian_filter32(image, 1.6 * s) for s in scales]
    padded = cv2.copyMakeBorder(np.ascontiguousarray(image, np.float32), pad, big_h - h - pad, pad,
                                big_w - w - pad, cv2.BORDER_REFLECT)
    spectrum = sfft.rfft2(padded, workers=1)
    return [sfft.irfft2(spectrum * _dog_transfer(big_h, big_w, s), s=(big_h, big_w), workers=1)[pad:pad + h,
                                                                                                   pad:pad + w]
            for s in scales]


@lru_cache(maxsize=12)
def _dog_transfer(big_h: int, big_w: int, s: float) -> np.ndarray:
    """The 2-D DFT (``rfft2`` layout, complex64) of the separable kernels of σ ``s`` minus those of 1.6 ``s``
    (:func:`gaussian_kernel`), centred at the origin of a ``big_h`` × ``big_w`` circular grid."""
    def dft(sigma: float, n: int, real: bool) -> np.ndarray:
        k = gaussian_kernel(sigma)[::-1]  # convolution weights (symmetric: the same)
        r = len(k) // 2
        z = np.zeros(n)
        z[:r + 1], z[n - r:] = k[r:], k[:r]
        return sfft.rfft(z) if real else sfft.fft(z)

    out = (dft(s, big_h, False)[:, None] * dft(s, big_w, True)[None, :]
           - dft(1.6 * s, big_h, False)[:, None] * dft(1.6 * s, big_w, True)[None, :])
    out = out.astype(np.complex64)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=16)
def _dog_gain(s: float) -> float:
    """White-noise gain of the difference of Gaussians σ ``s`` − 1.6 ``s`` (a constant per scale: computed once)."""
    return _white_noise_gain(_impulse((s, 1.6 * s)))


def _max_filter(image: np.ndarray, size: int) -> np.ndarray:
    """``ndimage.maximum_filter(image, size=size)`` (``reflect`` border: for a maximum, the window's part inside
    the image) by OpenCV's dilation with a square (replicated border: the same values)."""
    if image.ndim != 2 or image.dtype not in (np.float32, np.float64) or not image.size:
        return ndimage.maximum_filter(image, size=size)
    return cv2.dilate(image, np.ones((size, size), np.uint8), borderType=cv2.BORDER_REPLICATE)


def negative_needs_cells(report: QualityReport, config: QualityConfig | None = None) -> str | None:
    """The review reason when a negative call lacks evidence of cells (``report.nuclei`` < ``min_nuclei``)."""
    cfg = config or QualityConfig()
    if not cfg.enabled or report.nuclei is None or report.nuclei >= cfg.min_nuclei:
        return None
    return (f"no evidence of cells: {report.nuclei} nucleus-sized objects found (< {cfg.min_nuclei}); an empty or "
            "cell-free well cannot be reported negative")
