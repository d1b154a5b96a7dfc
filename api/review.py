"""Review: confirm or correct a specimen's pattern/intensity and single cells.

Each review is a new ``Review`` row (reviewer, time, old and new value, comment); the model's output is never
changed. The final value shown is the latest review, else the model's. Training reads these rows as labels:
``cell_pattern`` for cells, ``pattern``/``intensity`` for specimens.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, model_validator
from sqlalchemy import select

from api.audit import record
from api.auth import Reviewer, SessionDep, Viewer, get_or_404
from api.schemas import CellOut, CellPattern, Comment, IntensityClass, ReviewOut, SpecimenDetail, SpecimenPattern
from api.specimens import detail, load_row
from db.models import Cell, Review
from services.reports import refresh_for_slide

router = APIRouter(prefix="/v1", tags=["review"])
DbPath = Annotated[int, Path(ge=1, le=2**31 - 1)]


class SpecimenReviewIn(BaseModel):
    """``confirm`` records agreement with the current values; ``correct`` needs a pattern and/or intensity."""

    action: Literal["confirm", "correct"]
    pattern: SpecimenPattern | None = None
    intensity: IntensityClass | None = None
    comment: Comment | None = None

    @model_validator(mode="after")
    def _needs_a_value(self) -> SpecimenReviewIn:
        if self.action == "correct" and self.pattern is None and self.intensity is None:
            raise ValueError("a correction needs a pattern and/or an intensity")
        return self


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
    current = {"pattern": row.fp, "intensity": row.fi}
    wanted = {"pattern": body.pattern, "intensity": body.intensity}
    fields = [f for f in current if (body.action == "confirm" and wanted[f] is None) or wanted[f] is not None]
    rows = [Review(specimen_result_id=result.id, reviewer=who.name, field=f, old_value=current[f],
                   new_value=str(wanted[f] or current[f]), comment=body.comment) for f in fields]
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
    previous = session.scalar(select(Review.new_value).where(Review.cell_id == cell_id).order_by(Review.id.desc())
                              .limit(1)) or cell.predicted_pattern
    review = Review(cell_id=cell_id, reviewer=who.name, field="cell_pattern", old_value=previous,
                    new_value=body.pattern.value, comment=body.comment)
    session.add(review)
    session.flush()
    action = "review.cell_confirm" if body.pattern.value == cell.predicted_pattern else "review.cell_correct"
    record(session, who.actor, action, "cell", cell_id, review=review.id, slide_id=cell.slide_image_id,
           value=body.pattern.value)
    session.commit()
    out = CellOut.model_validate(cell)
    out.final_pattern, out.reviewed = body.pattern.value, True
    return out


@router.get("/specimens/{slide_id}/reviews", response_model=list[ReviewOut], tags=["specimens"])
def specimen_reviews(slide_id: DbPath, session: SessionDep, _: Viewer) -> list[Review]:
    """Every review of the specimen and its cells, oldest first."""
    row = load_row(session, slide_id)
    if row[1] is None:
        return []
    cell_ids = select(Cell.id).where(Cell.attempt_id == row[1].attempt_id)
    return list(session.scalars(select(Review).where((Review.specimen_result_id == row[1].id)
                                                     | Review.cell_id.in_(cell_ids)).order_by(Review.id)))
