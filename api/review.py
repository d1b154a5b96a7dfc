"""Review: confirm or correct a specimen's pattern/intensity and single cells; undo a review.

Each review is a new ``Review`` row (reviewer, time, old and new value, comment); the model's output is never
changed. The final value shown is the latest review that was not undone, else the model's. A specimen
correction takes ICAP codes (the whole ICAP tree, AC-0..AC-29; two codes = mixed) or one of the service's
patterns; both the ``pattern`` and the ``icap`` row are written, so the ICAP code always follows the pattern
(``hep2.vocabulary.PATTERN_OF_ICAP`` maps a code to the pattern; codes outside the classifier's six classes
become ``other``). Training reads the ``cell_pattern`` rows as labels, through the explicit
``hep2.vocabulary.TRAINING_LABEL_OF_CELL_REVIEW`` (``other`` and ``not_a_cell`` are left out). An undone review
stays in the history, marked, and is no longer a label.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from api.audit import record
from api.auth import Reviewer, SessionDep, Viewer, get_or_404
from api.schemas import (
    CellOut,
    CellPattern,
    Comment,
    IcapCode,
    IntensityClass,
    ReviewOut,
    SpecimenDetail,
    SpecimenPattern,
)
from api.specimens import detail, final_icap, load_row
from db.base import utcnow
from db.models import Cell, Review
from hep2.vocabulary import (
    CELL_REVIEW_LABELS,
    ICAP_TREE,
    INTENSITY_CLASSES,
    MIXED_SEPARATOR,
    icap_of_pattern,
    pattern_of_icap,
)
from services.reports import refresh_for_slide

router = APIRouter(prefix="/v1", tags=["review"])
DbPath = Annotated[int, Path(ge=1, le=2**31 - 1)]


class SpecimenReviewIn(BaseModel):
    """``confirm`` records agreement with the current values; ``correct`` needs ICAP code(s), a pattern and/or an
    intensity. ``icap``: one code, or two for a mixed pattern; the pattern follows from the first code."""

    action: Literal["confirm", "correct"]
    icap: list[IcapCode] | None = Field(None, min_length=1, max_length=2)
    pattern: SpecimenPattern | None = None
    intensity: IntensityClass | None = None
    comment: Comment | None = None

    @model_validator(mode="after")
    def _needs_a_value(self) -> SpecimenReviewIn:
        if self.action == "correct" and self.pattern is None and self.intensity is None and not self.icap:
            raise ValueError("a correction needs ICAP code(s), a pattern and/or an intensity")
        if self.icap and len(set(self.icap)) != len(self.icap):
            raise ValueError("a mixed pattern needs two different ICAP codes")
        if self.icap and self.pattern is not None and pattern_of_icap(self.icap[0].value) != self.pattern.value:
            raise ValueError(f"pattern {self.pattern.value!r} does not match ICAP code {self.icap[0].value} "
                             f"({pattern_of_icap(self.icap[0].value)})")
        return self

    def wanted(self) -> dict[str, str | None]:
        """field → new value (None: unchanged). The ICAP row is written whenever the pattern is."""
        if self.icap:
            codes = MIXED_SEPARATOR.join(c.value for c in self.icap)
            return {"pattern": pattern_of_icap(codes), "icap": codes,
                    "intensity": self.intensity.value if self.intensity else None}
        pattern = self.pattern.value if self.pattern else None
        return {"pattern": pattern, "icap": (icap_of_pattern(pattern) or "") if pattern else None,
                "intensity": self.intensity.value if self.intensity else None}


class CellReviewIn(BaseModel):
    pattern: CellPattern
    comment: Comment | None = None


@router.post("/specimens/{slide_id}/review", response_model=SpecimenDetail, status_code=status.HTTP_201_CREATED)
def review_specimen(slide_id: DbPath, body: SpecimenReviewIn, session: SessionDep, who: Reviewer) -> SpecimenDetail:
    """Confirm or correct the specimen's final pattern/intensity (one Review row per field)."""
    row = load_row(session, slide_id)
    result = row[1]
    if result is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"specimen {slide_id} has no result to review")
    current = {"pattern": row.fp, "icap": final_icap(row) or "", "intensity": row.fi}
    wanted = body.wanted()
    fields = [f for f in current if (body.action == "confirm" and wanted[f] is None) or wanted[f] is not None]
    rows = [Review(specimen_result_id=result.id, reviewer=who.name, field=f, old_value=current[f],
                   new_value=str(current[f] if wanted[f] is None else wanted[f]), comment=body.comment)
            for f in fields]
    session.add_all(rows)
    session.flush()
    record(session, who.actor, f"review.{body.action}", "specimen_result", result.id, slide_id=slide_id,
           reviews=[r.id for r in rows], values={r.field: r.new_value for r in rows})
    session.commit()
    refresh_for_slide(session, slide_id)  # the specimen report follows the review (docs/reports.md)
    return detail(session, slide_id)


@router.post("/cells/{cell_id}/review", response_model=CellOut, status_code=status.HTTP_201_CREATED)
def review_cell(cell_id: DbPath, body: CellReviewIn, session: SessionDep, who: Reviewer) -> CellOut:
    """Confirm (same pattern as predicted) or correct one cell's pattern."""
    cell = get_or_404(session, Cell, cell_id, "cell")
    previous = session.scalar(select(Review.new_value).where(Review.cell_id == cell_id, Review.undone_at.is_(None))
                              .order_by(Review.id.desc()).limit(1)) or cell.predicted_pattern
    review = Review(cell_id=cell_id, reviewer=who.name, field="cell_pattern", old_value=previous,
                    new_value=body.pattern.value, comment=body.comment)
    session.add(review)
    session.flush()
    action = "review.cell_confirm" if body.pattern.value == cell.predicted_pattern else "review.cell_correct"
    record(session, who.actor, action, "cell", cell_id, review=review.id, slide_id=cell.slide_image_id,
           value=body.pattern.value)
    session.commit()
    out = CellOut.model_validate(cell)
    out.final_pattern, out.reviewed, out.review_id = body.pattern.value, True, review.id
    return out


@router.post("/reviews/{review_id}/undo", response_model=ReviewOut)
def undo_review(review_id: DbPath, session: SessionDep, who: Reviewer) -> Review:
    """Undo a review (e.g. a cell correction made by mistake): it stays in the history, marked as undone, and no
    longer sets the final value or counts as a training label; 409 if it was already undone."""
    review = get_or_404(session, Review, review_id, "review")
    if review.undone_at is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"review {review_id} was already undone")
    review.undone_at, review.undone_by = utcnow(), who.name
    target = ("cell", review.cell_id) if review.cell_id else ("specimen_result", review.specimen_result_id)
    record(session, who.actor, "review.undo", target[0], target[1], review=review.id, field=review.field,
           value=review.new_value)
    session.commit()
    return review


@router.get("/specimens/{slide_id}/reviews", response_model=list[ReviewOut], tags=["specimens"])
def specimen_reviews(slide_id: DbPath, session: SessionDep, _: Viewer) -> list[Review]:
    """Every review of the specimen and its cells, oldest first."""
    row = load_row(session, slide_id)
    if row[1] is None:
        return []
    cell_ids = select(Cell.id).where(Cell.attempt_id == row[1].attempt_id)
    return list(session.scalars(select(Review).where((Review.specimen_result_id == row[1].id)
                                                     | Review.cell_id.in_(cell_ids)).order_by(Review.id)))


class VocabularyOut(BaseModel):
    icap: dict[str, str] = Field(description="ICAP code -> name (the whole tree)")
    pattern_of_icap: dict[str, str] = Field(description="ICAP code -> this service's pattern (others: other)")
    cell_labels: list[str] = Field(description="what a cell review may say")
    intensities: list[str]


@router.get("/vocabulary", response_model=VocabularyOut, tags=["review"])
def vocabulary(_: Viewer) -> VocabularyOut:
    """The codes and labels a review may use (the dashboard builds its choices from this)."""
    return VocabularyOut(icap=dict(ICAP_TREE), pattern_of_icap={c: pattern_of_icap(c) for c in ICAP_TREE},
                         cell_labels=list(CELL_REVIEW_LABELS), intensities=list(INTENSITY_CLASSES))
