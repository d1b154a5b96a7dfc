"""Stage 5: the specimen call from the cells: pattern, confidence, ICAP code, mixed pattern, review.

Aggregation: the mean of the interphase cells' probability vectors (mitotic and excluded cells do not vote);
the top pattern's mean probability is the confidence; a second pattern is reported (mixed) when its mean
probability and its share of cell votes are both substantial.

Review / out-of-vocabulary (OOV) rules, each with a documented default in :class:`SpecimenConfig`:

* too few interphase cells → review;
* weak evidence: low confidence or low agreement between cells → review;
* OOV (pattern ``other``): the classifier only knows six nuclear I3A classes, so a pattern it has not seen
  shows up as cells it is unsure about (low mean max-probability, high mean entropy) or as cells that
  disagree; a cytoplasmic pattern (AMA, Golgi-like, ...) additionally shows as signal *around* the nuclei
  comparable to the signal inside them (``cytoplasm_ratio``). Golgi is the one cytoplasmic I3A class, so a
  cytoplasmic field called Golgi stays Golgi unless the cells are unsure.
* line-like (fibrillar) texture in the cells, above what any nuclear I3A specimen shows
  (:mod:`analysis.fibrillar`) → review: cytoskeletal patterns are outlined as whole cells, which the
  cytoplasm ratio cannot see. Review only (the call is kept), as the cue is a single texture statistic.
* intensity negative → pattern ``negative`` (AC-0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from analysis import stats
from analysis.cells import Cell
from analysis.segmentation import dilate_cross
from analysis.types import FieldImage
from hep2.vocabulary import CELL_PATTERNS, ICAP_CODES, NEGATIVE, OTHER, Pattern


class SpecimenConfig(BaseModel):
    """Aggregation and review thresholds (how each default was chosen: docs/pipeline.md)."""

    min_cells: int = Field(10, ge=1, description="Fewer interphase cells: needs review.")
    min_confidence: float = Field(0.5, description="Top pattern's mean probability below this: weak, review.")
    min_agreement: float = Field(0.5, description="Share of cells voting for the top pattern below this: review.")
    oov_max_entropy: float = Field(0.65, description="Mean normalised cell entropy above this: out of vocabulary.")
    oov_min_cell_confidence: float = Field(0.50, description="Mean cell max-probability below this: OOV.")
    oov_cytoplasm_ratio: float = Field(0.8, description="Cytoplasm/nucleus signal ratio above this: cytoplasmic.")
    review_fibrillar_index: float = Field(0.85, description="Median cell line texture above this: review.")
    mixed_min_probability: float = Field(0.25, description="Second pattern's mean probability for 'mixed'.")
    mixed_min_votes: float = Field(0.2, description="Second pattern's share of cell votes for 'mixed'.")
    review_intermediate: bool = Field(False, description="Send intermediate-intensity specimens to review.")


@dataclass
class SpecimenResult:
    pattern: str
    """A :class:`Pattern` value, ``negative`` or ``other`` (out of vocabulary)."""
    icap: str | None
    confidence: float
    second_pattern: str | None = None
    second_confidence: float | None = None
    needs_review: bool = False
    reasons: list[str] = field(default_factory=list)
    best_known_pattern: str | None = None
    """The classifier's top pattern even when the call is ``other`` / ``negative``."""
    pattern_probabilities: dict[str, float] = field(default_factory=dict)
    vote_shares: dict[str, float] = field(default_factory=dict)
    cells_used: int = 0
    mean_cell_confidence: float | None = None
    mean_entropy: float | None = None
    cytoplasm_ratio: float | None = None
    fibrillar_index: float | None = None


def ring_width(area: float) -> int:
    """Width (px) of the ring around a nucleus of ``area`` px where cytoplasmic signal is measured."""
    return max(3, round(0.3 * np.sqrt(area / np.pi)))


def cytoplasm_ratio(field_image: FieldImage, labels: np.ndarray, cells: list[Cell], background: float,
                    ) -> float | None:
    """Median over interphase cells of (ring around the nucleus − bg) / (nucleus p90 − bg); None if unmeasurable.

    The ring is :func:`ring_width` px wide, outside every segmented nucleus. The nucleus counts by its 90th
    percentile, as in the intensity index: punctate nuclear patterns (nucleoli, centromeres) stain a small
    part of it, and its median would make them look cytoplasmic.
    """
    sig, h, w = field_image.signal, *labels.shape
    ratios = []
    for c in cells:
        if not c.interphase:
            continue
        r = ring_width(c.area)
        y0, x0, y1, x1 = c.bbox
        sl = (slice(max(y0 - r, 0), min(y1 + r, h)), slice(max(x0 - r, 0), min(x1 + r, w)))
        own = labels[sl] == c.label
        ring = dilate_cross(own, r) & (labels[sl] == 0) & ~field_image.annotation_mask[sl]
        ratio = _ring_ratio(sig[sl][own], sig[sl][ring], background)
        if ratio is not None:
            ratios.append(ratio)
    return float(np.median(ratios)) if ratios else None


def _ring_ratio(nucleus: np.ndarray, ring: np.ndarray, background: float) -> float | None:
    """(ring median − bg) / (nucleus 90th percentile − bg); None when the ring is too small or the nucleus dark."""
    inside = float(stats.sorted_percentile(nucleus, np.sort(nucleus), 90)) - background  # = np.percentile
    if ring.size < 10 or inside <= 0:
        return None
    return (float(stats.sorted_median(ring, np.sort(ring))) - background) / inside  # = np.median


def calibrate_oov(probs: np.ndarray, groups: np.ndarray, step: float = 0.05) -> dict[str, float]:
    """OOV thresholds from a classifier's predictions on held-out *in-vocabulary* specimens (e.g. I3A groups).

    Per specimen group: mean cell max-probability and mean normalised entropy. The thresholds are the most
    extreme group values, rounded outward to ``step``, so that no held-out in-vocabulary specimen would be
    called out of vocabulary by these two rules.
    """
    probs, groups = np.asarray(probs, np.float64), np.asarray(groups)
    ent = _entropy(probs)
    conf = [probs[groups == g].max(axis=1).mean() for g in np.unique(groups)]
    unsure = [ent[groups == g].mean() for g in np.unique(groups)]
    return {"oov_min_cell_confidence": round(float(np.floor(min(conf) / step) * step), 4),
            "oov_max_entropy": round(float(np.ceil(max(unsure) / step) * step), 4)}


def crop_cytoplasm_ratio(image: np.ndarray, mask: np.ndarray) -> float | None:
    """:func:`cytoplasm_ratio` for one cell crop with its mask (e.g. an I3A cell): the background is the 10th
    percentile outside the mask (a crop has too little background for the field's rule)."""
    img, own = np.asarray(image, np.float64), np.asarray(mask) > 0
    if own.sum() < 20 or (~own).sum() < 50:
        return None
    ring = dilate_cross(own, ring_width(own.sum())) & ~own
    return _ring_ratio(img[own], img[ring], float(np.percentile(img[~own], 10)))


def group_medians(ratios: np.ndarray, groups: np.ndarray, patterns: np.ndarray) -> dict[tuple[str, str], float]:
    """Median ratio per (pattern, specimen group) over the cells that could be measured (not NaN)."""
    ratios, groups, patterns = np.asarray(ratios, np.float64), np.asarray(groups), np.asarray(patterns)
    ok = ~np.isnan(ratios)
    keys = sorted(set(zip(patterns[ok].tolist(), groups[ok].tolist(), strict=True)))
    return {(p, g): float(np.median(ratios[ok & (patterns == p) & (groups == g)])) for p, g in keys}


def calibrate_nuclear_max(ratios: np.ndarray, groups: np.ndarray, patterns: np.ndarray, step: float = 0.05,
                          ) -> float:
    """A threshold from cells of *nuclear* in-vocabulary specimens (Golgi groups are ignored): the highest
    specimen-group median, rounded up to ``step``, so that no such specimen would cross it
    (``oov_cytoplasm_ratio``, ``review_fibrillar_index``)."""
    medians = [m for (pattern, _), m in group_medians(ratios, groups, patterns).items()
               if pattern != Pattern.GOLGI.value]
    return round(float(np.ceil(max(medians) / step) * step), 4)


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return -(q * np.log(q)).sum(axis=1) / np.log(p.shape[1])


def rank_patterns(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The specimen's pattern probabilities (the mean of its cells' probability vectors) and the pattern
    indices from most to least probable; also what ``training.specimen_metrics`` scores."""
    mean = np.asarray(probs, dtype=np.float64).mean(axis=0)
    return mean, np.argsort(mean)[::-1]


def aggregate(cells: list[Cell], intensity_class: str, cyto_ratio: float | None = None,
              config: SpecimenConfig | None = None, fibrillar: float | None = None) -> SpecimenResult:
    """The specimen call (see module docstring)."""
    cfg = config or SpecimenConfig()
    names = [p.value for p in CELL_PATTERNS]
    used = [c for c in cells if c.interphase]
    probs = np.array([c.probabilities for c in used], dtype=np.float64).reshape(len(used), len(names))
    if intensity_class == NEGATIVE:
        best = names[int(probs.mean(0).argmax())] if len(used) else None
        return SpecimenResult(pattern=NEGATIVE, icap=ICAP_CODES[NEGATIVE], confidence=1.0, cells_used=len(used),
                              best_known_pattern=best, reasons=["fluorescence index below the negative cut-off"])
    if not used:
        return SpecimenResult(pattern=OTHER, icap=None, confidence=0.0, needs_review=True,
                              reasons=["no interphase cells could be classified"], cytoplasm_ratio=cyto_ratio)
    mean, order = rank_patterns(probs)
    votes = np.bincount(probs.argmax(axis=1), minlength=len(names)) / len(used)
    top, second = int(order[0]), int(order[1])
    res = SpecimenResult(
        pattern=names[top], icap=ICAP_CODES[names[top]], confidence=round(float(mean[top]), 4),
        best_known_pattern=names[top], cells_used=len(used),
        pattern_probabilities={n: round(float(v), 4) for n, v in zip(names, mean, strict=True)},
        vote_shares={n: round(float(v), 4) for n, v in zip(names, votes, strict=True)},
        mean_cell_confidence=round(float(probs.max(axis=1).mean()), 4),
        mean_entropy=round(float(_entropy(probs).mean()), 4),
        cytoplasm_ratio=None if cyto_ratio is None else round(cyto_ratio, 4),
        fibrillar_index=None if fibrillar is None else round(fibrillar, 4))
    if mean[second] >= cfg.mixed_min_probability and votes[second] >= cfg.mixed_min_votes:
        res.second_pattern, res.second_confidence = names[second], round(float(mean[second]), 4)
    oov = []
    if res.mean_entropy > cfg.oov_max_entropy:
        oov.append(f"cells are uncertain (mean entropy {res.mean_entropy:.2f} > {cfg.oov_max_entropy})")
    if res.mean_cell_confidence < cfg.oov_min_cell_confidence:
        oov.append(f"cells are uncertain (mean max-probability {res.mean_cell_confidence:.2f} "
                   f"< {cfg.oov_min_cell_confidence})")
    if cyto_ratio is not None and cyto_ratio > cfg.oov_cytoplasm_ratio and names[top] != Pattern.GOLGI:
        oov.append(f"cytoplasmic staining (cytoplasm/nucleus {cyto_ratio:.2f} > {cfg.oov_cytoplasm_ratio})")
    weak = []
    if len(used) < cfg.min_cells:
        weak.append(f"too few interphase cells ({len(used)} < {cfg.min_cells})")
    if mean[top] < cfg.min_confidence:
        weak.append(f"weak evidence (confidence {mean[top]:.2f} < {cfg.min_confidence})")
    if votes[top] < cfg.min_agreement:
        weak.append(f"cells disagree (top pattern has {votes[top]:.0%} of votes < {cfg.min_agreement:.0%})")
    if fibrillar is not None and fibrillar > cfg.review_fibrillar_index:
        weak.append(f"line-like (fibrillar) texture, possibly a cytoplasmic filament pattern "
                    f"(index {fibrillar:.2f} > {cfg.review_fibrillar_index})")
    if intensity_class == "intermediate" and cfg.review_intermediate:
        weak.append("intermediate (borderline) intensity")
    if oov:
        res.pattern, res.icap, res.second_pattern, res.second_confidence = OTHER, None, None, None
        res.reasons.append("pattern outside the model's vocabulary: " + "; ".join(oov))
    res.reasons.extend(weak)
    res.needs_review = bool(oov or weak)
    return res


def hold_for_review(result: SpecimenResult, reasons: list[str], withdraw_negative: bool = False) -> SpecimenResult:
    """Add review ``reasons`` (e.g. from the quality gate) to ``result``. ``withdraw_negative``: the negative
    call lacks evidence (no cells seen), so it is not reported as negative: pattern ``other``, no ICAP code,
    confidence 0, needs review (the intensity class stays what was measured)."""
    if withdraw_negative and result.pattern == NEGATIVE:
        result.pattern, result.icap, result.confidence = OTHER, None, 0.0
        result.reasons = [r for r in result.reasons if "negative cut-off" not in r]
        result.reasons.append("fluorescence index below the negative cut-off, but negative not confirmed")
    if reasons:
        result.reasons.extend(reasons)
        result.needs_review = True
    return result
