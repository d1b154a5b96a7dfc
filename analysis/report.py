"""Specimen report rules: every analysed image of one accession aggregated into one reading.

Pure functions over :class:`ImageReading` values (no database, no I/O), so that the worker that recomputes a
report, the API and the CLI share exactly one set of rules, and the unit tests check them directly. The rules
(docs/reports.md):

* an image is **positive** when its final intensity is not ``negative`` and its final pattern is not
  ``negative``; the specimen is positive when one analysed image is, negative when all analysed images are
  negative, ``indeterminate`` while none is analysed;
* **end-point titer**: the highest dilution with a positive image; ``≥1:N`` when the highest tested dilution
  is still positive; ``negative`` (``<1:lowest``) when no dilution is positive; ``None`` without dilutions;
  a negative dilution below a positive one (a non-monotonic series) and fields of one dilution that disagree
  are review reasons;
* **patterns**: the most frequent final pattern of the positive images first; a further pattern is kept
  (a mixed result; nuclear plus cytoplasmic is a mixed result too) when it is the call of at least
  ``mixed_min_share`` of the positive images or an image's own second (mixed) pattern; a pattern called by
  fewer images is a review reason; each pattern gets its own end-point;
* **intensity**: the strongest final intensity at the lowest positive dilution (the screening dilution);
* **review**: every image that needs review and has no review yet passes its reasons on; images still being
  analysed, ``other`` (out-of-vocabulary) calls and the series problems above are reasons too.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field, field_validator

from hep2.vocabulary import ICAP_CODES, INTENSITY_CLASSES, NEGATIVE, OTHER, Pattern

DILUTION = re.compile(r"^1:(\d{1,6})$")
CYTOPLASMIC = frozenset({Pattern.GOLGI.value})
"""Patterns of the vocabulary that stain the cytoplasm (ICAP AC-15..23); the others are nuclear."""
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"


class Code(BaseModel):
    """A coded concept: ``system`` is a FHIR system URI, ``hl7_system`` its HL7 v2 coding-system name."""

    code: str
    display: str
    system: str = LOINC
    hl7_system: str = "LN"


class ReportConfig(BaseModel):
    """The lab's report rules and codes (the ``report`` section of the pipeline config, docs/reports.md)."""

    mixed_min_share: float = Field(0.34, ge=0, le=1, description="Share of positive images calling a further "
                                                                 "pattern for it to be reported (mixed).")
    representative_cells: int = Field(4, ge=0, le=32, description="Cells shown per pattern on the report.")
    # HL7 v2 header
    sending_application: str = "HEP2"
    sending_facility: str = "HEP2-LAB"
    receiving_application: str = "LIS"
    receiving_facility: str = "LAB"
    processing_id: str = Field("P", description="MSH-11: P production, T training, D debugging.")
    control_id_prefix: str = Field("HEP2R", max_length=8, description="MSH-10 = prefix + report version row id.")
    # codes
    order: Code = Code(code="8061-4", display="Nuclear Ab [Presence] in Serum by Immunofluorescence")
    screen: Code = Code(code="8061-4", display="Nuclear Ab [Presence] in Serum by Immunofluorescence")
    titer: Code = Code(code="5048-4", display="Nuclear Ab [Titer] in Serum by Immunofluorescence")
    pattern: Code = Code(code="49311-4", display="Nuclear Ab pattern [Interpretation] in Serum by Immunofluorescence")
    intensity: Code = Code(code="HEP2-INT", display="HEp-2 IIF fluorescence intensity", system="urn:hep2:local",
                           hl7_system="L")
    positive: Code = Code(code="260373001", display="Detected", system=SNOMED, hl7_system="SCT")
    negative: Code = Code(code="260415000", display="Not detected", system=SNOMED, hl7_system="SCT")
    icap_system: str = Field("https://www.anapatterns.org", description="FHIR system of the ICAP AC codes.")
    icap_hl7_system: str = Field("ICAP", description="HL7 v2 coding-system name of the ICAP AC codes.")
    icap_codes: dict[str, str] = Field(default_factory=lambda: {str(k): v for k, v in ICAP_CODES.items()},
                                       description="pattern -> ICAP code")
    local_system: str = Field("urn:hep2:local", description="FHIR system of the lab's own pattern codes.")
    local_hl7_system: str = Field("L", description="HL7 v2 coding-system name of the lab's own codes.")
    local_codes: dict[str, str] = Field(default_factory=dict, description="pattern -> the lab's own code "
                                                                          "(sent as the alternate coding)")
    patient_id_system: str = Field("urn:hep2:pseudo-id", description="FHIR identifier system of patient ids.")
    accession_system: str = Field("urn:hep2:accession", description="FHIR identifier system of accessions.")

    @field_validator("icap_codes", mode="before")
    @classmethod
    def _over_the_defaults(cls, value: dict[str, str]) -> dict[str, str]:
        """A lab's ``icap_codes`` override single patterns; the others keep their default codes."""
        return {**{str(k): v for k, v in ICAP_CODES.items()}, **(value or {})}


@dataclass(frozen=True)
class ImageReading:
    """One image of a specimen with its *final* values (latest review, else the model's)."""

    slide_id: int
    dilution: str | None
    status: str
    analysed: bool
    pattern: str | None = None
    intensity: str | None = None
    second_pattern: str | None = None
    confidence: float | None = None
    needs_review: bool = False
    review_reason: str | None = None
    reviewed: bool = False


@dataclass
class Aggregate:
    result: str
    intensity: str | None
    titer: dict[str, Any]
    patterns: list[dict[str, Any]]
    needs_review: bool
    review_reasons: list[dict[str, Any]] = field(default_factory=list)
    pending_images: int = 0
    complete: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"result": self.result, "intensity": self.intensity, "titer": self.titer,
                "patterns": self.patterns, "mixed": len(self.patterns) > 1, "needs_review": self.needs_review,
                "review_reasons": self.review_reasons, "pending_images": self.pending_images,
                "complete": self.complete}


def dilution_denominator(dilution: str | None) -> int | None:
    """``"1:160"`` -> 160; ``None`` for a missing or malformed dilution."""
    match = DILUTION.match((dilution or "").strip())
    return int(match.group(1)) if match else None


def is_positive(reading: ImageReading) -> bool:
    return bool(reading.analysed and reading.intensity not in (None, NEGATIVE) and reading.pattern != NEGATIVE)


def compartment(pattern: str) -> str:
    if pattern == OTHER:
        return "unclassified"
    return "cytoplasmic" if pattern in CYTOPLASMIC else "nuclear"


def titer_text(denominator: int | None, at_least: bool = False, below: bool = False) -> str | None:
    if denominator is None:
        return None
    return f"{'≥' if at_least else '<' if below else ''}1:{denominator}"


def end_point(series: dict[int, bool]) -> dict[str, Any]:
    """The end-point titer of ``{denominator: positive}``: highest positive dilution, ``≥`` when that is the
    highest tested, ``negative`` (below the lowest) when none is positive."""
    if not series:
        return {"endpoint": None, "text": None, "at_least": False, "negative": None}
    positives = [d for d, positive in series.items() if positive]
    if not positives:
        return {"endpoint": None, "text": "negative", "below": titer_text(min(series), below=True),
                "at_least": False, "negative": True}
    top = max(positives)
    at_least = top == max(series)
    return {"endpoint": top, "text": titer_text(top, at_least=at_least), "at_least": at_least, "negative": False}


def _reason(reason: str, slide_id: int | None = None) -> dict[str, Any]:
    return {"slide_id": slide_id, "reason": reason}


def aggregate(readings: list[ImageReading], config: ReportConfig | None = None) -> Aggregate:
    """The specimen's reading from its images (rules in the module docstring)."""
    config = config or ReportConfig()
    reasons: list[dict[str, Any]] = []
    analysed = [r for r in readings if r.analysed]
    pending = [r for r in readings if not r.analysed and r.status in {"received", "queued", "running"}]
    for r in readings:
        if r.analysed and r.needs_review and not r.reviewed:
            where = f" ({r.dilution})" if r.dilution else ""
            reasons.append(_reason(f"image {r.slide_id}{where}: {r.review_reason or 'needs review'}", r.slide_id))
        if r.analysed and r.pattern == OTHER and not r.reviewed:
            reasons.append(_reason(f"image {r.slide_id}: pattern outside the vocabulary (other)", r.slide_id))
    if pending:
        reasons.append(_reason(f"{len(pending)} image(s) still being analysed"))
    positives = [r for r in analysed if is_positive(r)]

    # the dilution series
    by_dilution: dict[int, list[ImageReading]] = defaultdict(list)
    for r in analysed:
        d = dilution_denominator(r.dilution)
        if d is not None:
            by_dilution[d].append(r)
    series = {d: any(is_positive(r) for r in group) for d, group in sorted(by_dilution.items())}
    for d, group in sorted(by_dilution.items()):
        calls = {is_positive(r) for r in group}
        if len(calls) > 1:
            reasons.append(_reason(f"fields at 1:{d} disagree (positive and negative)"))
    titer = end_point(series)
    if titer["negative"] is False:
        below = [d for d, positive in series.items() if not positive and d < titer["endpoint"]]
        if below:
            reasons.append(_reason(f"dilution series not monotonic: negative at 1:{min(below)} below the "
                                   f"positive 1:{titer['endpoint']}"))
    titer["series"] = [{"dilution": f"1:{d}", "denominator": d, "positive": series[d],
                        "images": [r.slide_id for r in by_dilution[d]],
                        "patterns": sorted({r.pattern for r in by_dilution[d] if is_positive(r) and r.pattern}),
                        "intensity": _strongest([r.intensity for r in by_dilution[d]])}
                       for d in series]

    # patterns
    calls = Counter(r.pattern for r in positives if r.pattern)
    seconds = Counter(r.second_pattern for r in positives if r.second_pattern)
    confidence: dict[str, float] = defaultdict(float)
    for r in positives:
        if r.pattern:
            confidence[r.pattern] += r.confidence or 0.0
    ranked = sorted(calls, key=lambda p: (-calls[p], -confidence[p], p))
    kept: list[str] = ranked[:1]
    for p in ranked[1:]:
        if calls[p] / len(positives) >= config.mixed_min_share:
            kept.append(p)
        else:
            reasons.append(_reason(f"pattern disagreement: {p} in {calls[p]} of {len(positives)} positive "
                                   f"image(s), {ranked[0]} in {calls[ranked[0]]}"))
    for p in sorted(seconds, key=lambda p: (-seconds[p], p)):
        if p not in kept and p != NEGATIVE:
            kept.append(p)
    patterns = []
    for p in kept:
        images = [r for r in positives if p in (r.pattern, r.second_pattern)]
        pattern_series = {d: any(p in (r.pattern, r.second_pattern) and is_positive(r) for r in group)
                          for d, group in by_dilution.items()}
        point = end_point(pattern_series) if pattern_series else {"text": None, "endpoint": None}
        patterns.append({"pattern": p, "icap": config.icap_codes.get(p), "local_code": config.local_codes.get(p),
                         "compartment": compartment(p), "endpoint": point["text"],
                         "images": [r.slide_id for r in images]})

    lowest_positive = min((d for d, positive in series.items() if positive), default=None)
    screening = by_dilution[lowest_positive] if lowest_positive is not None else positives
    intensity = _strongest([r.intensity for r in screening if is_positive(r)]) if positives else (
        NEGATIVE if analysed else None)
    result = "positive" if positives else "negative" if analysed else "indeterminate"
    return Aggregate(result=result, intensity=intensity, titer=titer, patterns=patterns,
                     needs_review=bool(reasons), review_reasons=reasons, pending_images=len(pending),
                     complete=not pending)


def _strongest(values: list[str | None]) -> str | None:
    known = [v for v in values if v in INTENSITY_CLASSES]
    return max(known, key=INTENSITY_CLASSES.index) if known else None
