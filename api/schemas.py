"""Request and response bodies shared by the routers (pydantic validates every input)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from hep2.vocabulary import CELL_PATTERNS, CELL_REVIEW_LABELS, ICAP_TREE, INTENSITY_CLASSES, NEGATIVE, OTHER

CellPattern = StrEnum("CellPattern", {v.upper(): v for v in CELL_REVIEW_LABELS})
"""A cell review: one of the six classifier classes, ``other`` or ``not_a_cell``."""
IcapCode = StrEnum("IcapCode", {code.replace("-", "_"): code for code in ICAP_TREE})
SPECIMEN_PATTERNS = [p.value for p in CELL_PATTERNS] + [NEGATIVE, OTHER]
SpecimenPattern = StrEnum("SpecimenPattern", {v.upper(): v for v in SPECIMEN_PATTERNS})
IntensityClass = StrEnum("IntensityClass", {v.upper(): v for v in INTENSITY_CLASSES})

DbId = Annotated[int, Field(ge=1, le=2**31 - 1)]
Comment = Annotated[str, StringConstraints(max_length=2000, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9 ._@:-]+$")]
PseudoId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class SpecimenItem(BaseModel):
    """One analysed slide-well image in a list; ``pattern``/``intensity`` are the final values."""

    id: int
    key: str
    file_name: str = Field(description="the uploaded file's name (last part of its key)")
    accession: str | None
    patient: str | None
    well: str | None
    dilution: str | None
    status: str
    status_reason: str | None
    received_at: datetime
    finished_at: datetime | None
    result_id: int | None
    pattern: str | None
    intensity: str | None
    icap: str | None = Field(None, description="final ICAP code(s): follows the corrected pattern; mixed = A+B")
    model_pattern: str | None
    model_intensity: str | None
    model_icap: str | None = None
    confidence: float | None
    second_pattern: str | None
    needs_review: bool
    review_reason: str | None = None
    reviewed: bool


class SpecimenPage(BaseModel):
    items: list[SpecimenItem]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; null on the last.")


class ModelVersionOut(ORM):
    id: int
    task: str
    version: str
    stage: str
    stage_reason: str | None
    family: str | None = Field(None, description="cell classifier: cnn, or fused (CNN + texture, one version)")
    metrics: dict[str, Any]
    data_hash: str | None
    code_version: str | None
    training_run_id: int | None
    created_at: datetime
    promoted_at: datetime | None
    mca: float | None = Field(None, description="grouped-CV mean class accuracy (its metrics, else its model card)")


class ResultOut(ORM):
    """The model's own output, never changed by a review."""

    id: int
    attempt_id: int
    intensity_class: str
    intensity_index: float
    pattern: str
    icap_code: str | None
    confidence: float
    second_pattern: str | None
    second_confidence: float | None
    cell_count: int
    needs_review: bool
    review_reason: str | None
    quality: dict[str, Any] | None = Field(None, description="image-quality gate: noise, focus, nuclei seen, ...")
    created_at: datetime


class ReviewOut(ORM):
    id: int
    specimen_result_id: int | None
    cell_id: int | None
    reviewer: str
    field: str
    old_value: str | None
    new_value: str
    comment: str | None
    created_at: datetime
    undone_at: datetime | None = None
    undone_by: str | None = None


class AttemptOut(ORM):
    id: int
    number: int
    worker: str | None
    outcome: str
    error: str | None
    stage_timings_ms: dict[str, Any] | None
    started_at: datetime
    finished_at: datetime | None


class SpecimenDetail(BaseModel):
    item: SpecimenItem
    sidecar: dict[str, Any] | None
    exposure_ms: float | None
    kit_lot: str | None
    scanner: str | None
    sha256: str | None
    result: ResultOut | None
    final: dict[str, str | None] = Field(description="pattern/intensity/icap after the latest review, else the "
                                                     "model's")
    reviews: list[ReviewOut] = Field(description="reviews of the result and of its cells, oldest first (undone ones "
                                                 "included, marked)")
    attempts: list[AttemptOut]
    model_versions: list[ModelVersionOut]
    overlay_url: str | None = Field(None, description="Short-lived presigned URL of the overlay PNG (rendered "
                                                      "on the first request for it)")
    overlay_problem: str | None = Field(None, description="Why there is no overlay_url although the result has "
                                                          "an overlay (e.g. the uploaded image changed)")
    image_url: str | None = Field(None, description="Short-lived presigned URL of the uploaded image")


class CellOut(ORM):
    id: int
    index: int
    bbox_x: int
    bbox_y: int
    bbox_w: int
    bbox_h: int
    centroid_x: float
    centroid_y: float
    area_px: int
    mean_intensity: float | None
    probabilities: dict[str, float]
    predicted_pattern: str
    confidence: float
    mitotic: bool
    final_pattern: str = ""
    reviewed: bool = False
    review_id: int | None = Field(None, description="the review that set final_pattern (undo it to go back)")


class Overview(BaseModel):
    per_day: list[dict[str, Any]] = Field(description="[{day, status, count}] by received date")
    per_pattern: list[dict[str, Any]] = Field(description="[{pattern, count}] of final patterns")
    total: int
