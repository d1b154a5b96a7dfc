"""``/v1/specimens``: the worklist (filters, keyset pagination), detail, cells and overview counts.

An entry is one analysed slide-well image (``SlideImage``) with its latest result; its specimen accession
and patient pseudo-id come along. ``pattern``/``intensity`` are *final* values: the latest review, else
the model's output (which itself is never changed).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from sqlalchemy import ColumnElement, Select, and_, case, exists, false, func, select, tuple_
from sqlalchemy.orm import Session, aliased

from api.auth import SessionDep, Viewer
from api.schemas import (
    AttemptOut,
    CellOut,
    IntensityClass,
    ModelVersionOut,
    Overview,
    PseudoId,
    ResultOut,
    ReviewOut,
    SpecimenDetail,
    SpecimenItem,
    SpecimenPage,
    SpecimenPattern,
)
from db.base import utcnow
from db.models import AnalysisAttempt, Cell, Patient, Review, SlideImage, SlideStatus, Specimen, SpecimenResult
from hep2.storage import storage_from_settings
from hep2.vocabulary import icap_of_pattern
from services import overlays

router = APIRouter(prefix="/v1/specimens", tags=["specimens"])
URL_TTL_S = 300
MAX_ID = 2**31 - 1
SlideId = Annotated[int, Path(ge=1, le=MAX_ID)]

latest = (select(SpecimenResult.slide_image_id.label("slide_id"), func.max(SpecimenResult.id).label("result_id"))
          .group_by(SpecimenResult.slide_image_id).subquery("latest"))
"""The latest result per slide (one grouped pass, joined by hash, not a subquery per row)."""


def _reviewed_value(field: str) -> Any:
    """The latest review's value of ``field`` (undone reviews do not count)."""
    return (select(Review.new_value).where(Review.specimen_result_id == SpecimenResult.id, Review.field == field,
                                           Review.undone_at.is_(None))
            .order_by(Review.id.desc()).limit(1).correlate(SpecimenResult).scalar_subquery())


final_pattern = func.coalesce(_reviewed_value("pattern"), SpecimenResult.pattern)
final_intensity = func.coalesce(_reviewed_value("intensity"), SpecimenResult.intensity_class)
reviewed_icap = _reviewed_value("icap")
reviewed = (exists().where(Review.specimen_result_id == SpecimenResult.id, Review.undone_at.is_(None))
            .correlate(SpecimenResult))
needs_review = func.coalesce(SpecimenResult.needs_review, false())
priority = case((and_(needs_review, ~reviewed), 1), else_=0)
"""Worklist order: unreviewed results that need review first, then newest first."""


def joined(*columns: Any) -> Select[Any]:
    """``columns`` over slides with their latest result, specimen and patient (outer joins)."""
    return (select(*columns).outerjoin(latest, latest.c.slide_id == SlideImage.id)
            .outerjoin(SpecimenResult, SpecimenResult.id == latest.c.result_id)
            .outerjoin(Specimen, Specimen.id == SlideImage.specimen_id)
            .outerjoin(Patient, Patient.id == Specimen.patient_id))


def base_query() -> Select[Any]:
    return joined(SlideImage, SpecimenResult, Specimen.accession, Patient.pseudo_id, final_pattern.label("fp"),
                  final_intensity.label("fi"), reviewed_icap.label("ficap"), reviewed.label("rv"),
                  priority.label("pr"))


def final_icap(row: Any) -> str | None:
    """The ICAP code(s) of the final pattern: the latest review's (a correction always records one), else the
    model's when the pattern is the model's, else the code of the reviewed pattern (reviews written before
    corrections recorded a code). An empty reviewed code means none (``other``)."""
    result = row[1]
    if row.ficap is not None:
        return row.ficap or None
    if result is None:
        return None
    return result.icap_code if row.fp == result.pattern else icap_of_pattern(row.fp)


def to_item(row: Any) -> SpecimenItem:
    slide, result = row[0], row[1]
    return SpecimenItem(
        id=slide.id, key=slide.key, file_name=slide.key.rsplit("/", 1)[-1], accession=row.accession,
        patient=row.pseudo_id, well=slide.well,
        dilution=slide.dilution, status=slide.status.value, status_reason=slide.status_reason,
        received_at=slide.received_at, finished_at=slide.finished_at, result_id=result.id if result else None,
        pattern=row.fp, intensity=row.fi, icap=final_icap(row), model_pattern=result.pattern if result else None,
        model_intensity=result.intensity_class if result else None, model_icap=result.icap_code if result else None,
        confidence=result.confidence if result else None, second_pattern=result.second_pattern if result else None,
        needs_review=bool(result and result.needs_review), review_reason=result.review_reason if result else None,
        reviewed=bool(row.rv))


def encode_cursor(row: Any) -> str:
    raw = json.dumps([row.pr, row.received_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


MIN_CURSOR_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_CURSOR_TIME = datetime(9999, 1, 1, tzinfo=UTC)


def decode_cursor(cursor: str) -> tuple[int, datetime, int]:
    """The sort keys of a cursor from :func:`encode_cursor`; 422 for anything else (huge or non-integer
    numbers, floats, out-of-range dates), so a forged cursor never reaches the database."""
    try:
        p, received, slide_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        when = datetime.fromisoformat(received) if isinstance(received, str) and len(received) <= 40 else None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    except (ValueError, TypeError, RecursionError, binascii.Error, UnicodeDecodeError):
        when = p = slide_id = None
    if (type(p) is not int or p not in (0, 1) or type(slide_id) is not int or not 1 <= slide_id <= MAX_ID
            or when is None or not MIN_CURSOR_TIME <= when <= MAX_CURSOR_TIME):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "invalid cursor: pass next_cursor unchanged")
    return p, when, slide_id


@router.get("", response_model=SpecimenPage)
def list_specimens(
    session: SessionDep, _: Viewer,
    status_: Annotated[list[SlideStatus] | None, Query(alias="status")] = None,
    pattern: Annotated[list[SpecimenPattern] | None, Query(description="final pattern")] = None,
    intensity: Annotated[list[IntensityClass] | None, Query(description="final intensity class")] = None,
    needs_review_: Annotated[bool | None, Query(alias="needs_review")] = None,
    reviewed_: Annotated[bool | None, Query(alias="reviewed")] = None,
    received_from: datetime | None = None,
    received_to: datetime | None = None,
    patient: PseudoId | None = None,
    accession: Annotated[PseudoId | None, Query(description="accession or its beginning")] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> SpecimenPage:
    """The worklist: needs-review-and-unreviewed first, then newest first; keyset-paginated."""
    # a narrow query picks the page (sort keys only), then the page's rows are loaded in full
    query = joined(SlideImage.id, SlideImage.received_at, priority.label("pr"))
    conditions: list[ColumnElement[bool]] = []
    if status_:
        conditions.append(SlideImage.status.in_(status_))
    if pattern:
        conditions.append(final_pattern.in_([p.value for p in pattern]))
    if intensity:
        conditions.append(final_intensity.in_([i.value for i in intensity]))
    if needs_review_ is not None:
        conditions.append(needs_review == needs_review_)
    if reviewed_ is not None:
        conditions.append(reviewed if reviewed_ else ~reviewed)
    if received_from is not None:
        conditions.append(SlideImage.received_at >= received_from)
    if received_to is not None:
        conditions.append(SlideImage.received_at < received_to)
    if patient is not None:
        conditions.append(Patient.pseudo_id == patient)
    if accession is not None:
        conditions.append(Specimen.accession.startswith(accession, autoescape=True))  # a prefix
    if cursor:
        conditions.append(tuple_(priority, SlideImage.received_at, SlideImage.id) < tuple_(*decode_cursor(cursor)))
    query = query.where(*conditions).order_by(priority.desc(), SlideImage.received_at.desc(), SlideImage.id.desc())
    keys = session.execute(query.limit(limit + 1)).all()
    page = [k.id for k in keys[:limit]]
    full = {r[0].id: r for r in session.execute(base_query().where(SlideImage.id.in_(page)))} if page else {}
    items = [to_item(full[i]) for i in page]
    return SpecimenPage(items=items, next_cursor=encode_cursor(keys[limit - 1]) if len(keys) > limit else None)


@router.get("/overview", response_model=Overview)
def overview(session: SessionDep, _: Viewer, days: Annotated[int, Query(ge=1, le=366)] = 30) -> Overview:
    """Counts for the overview: per received day and status (last ``days`` days), per final pattern."""
    day = func.date(SlideImage.received_at)
    per_day = session.execute(select(day.label("day"), SlideImage.status, func.count())
                              .where(SlideImage.received_at >= utcnow() - timedelta(days=days))
                              .group_by(day, SlideImage.status).order_by(day.desc())).all()
    sub = base_query().subquery()
    per_pattern = session.execute(select(sub.c.fp, func.count()).where(sub.c.fp.is_not(None))
                                  .group_by(sub.c.fp).order_by(func.count().desc())).all()
    total = session.scalar(select(func.count()).select_from(SlideImage)) or 0
    return Overview(per_day=[{"day": str(d), "status": s.value, "count": n} for d, s, n in per_day],
                    per_pattern=[{"pattern": p, "count": n} for p, n in per_pattern], total=total)


def load_row(session: Session, slide_id: int) -> Any:
    row = session.execute(base_query().where(SlideImage.id == slide_id)).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"specimen {slide_id} not found")
    return row


def detail(session: Session, slide_id: int) -> SpecimenDetail:
    """Everything the specimen page shows."""
    row = load_row(session, slide_id)
    slide, result = row[0], row[1]
    storage = storage_from_settings()
    attempt = session.get(AnalysisAttempt, result.attempt_id) if result else None
    reviews = session.scalars(select(Review).where(
        (Review.specimen_result_id == result.id)
        | Review.cell_id.in_(select(Cell.id).where(Cell.attempt_id == result.attempt_id)))
        .order_by(Review.id)).all() if result else []
    overlay, problem = overlays.overlay_or_problem(storage, slide, result)
    return SpecimenDetail(
        item=to_item(row), sidecar=slide.sidecar, exposure_ms=slide.exposure_ms, kit_lot=slide.kit_lot,
        scanner=slide.scanner, sha256=slide.sha256,
        result=ResultOut.model_validate(result) if result else None,
        final={"pattern": row.fp, "intensity": row.fi, "icap": final_icap(row)},
        reviews=[ReviewOut.model_validate(r) for r in reviews],
        attempts=[AttemptOut.model_validate(a) for a in slide.attempts],
        model_versions=[ModelVersionOut.model_validate(m) for m in (attempt.model_versions if attempt else [])],
        overlay_url=storage.presigned_url(overlay, URL_TTL_S) if overlay else None, overlay_problem=problem,
        image_url=storage.presigned_url(slide.key, URL_TTL_S),
    )


@router.get("/{slide_id}", response_model=SpecimenDetail)
def get_specimen(slide_id: SlideId, session: SessionDep, _: Viewer) -> SpecimenDetail:
    """Detail: sidecar, latest result, final values, reviews, attempts, model versions, presigned URLs."""
    return detail(session, slide_id)


@router.get("/{slide_id}/image", response_class=Response,
            responses={200: {"content": {t: {"schema": {"type": "string", "format": "binary"}}
                                         for t in ("image/png", "image/tiff", "image/jpeg")}}})
def get_image(slide_id: SlideId, session: SessionDep, _: Viewer) -> Response:
    """The uploaded image itself, from the API's own origin (the dashboard reads its pixels for the
    contrast-stretched view, which a cross-origin presigned URL would not allow)."""
    slide = session.get(SlideImage, slide_id)
    if slide is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"specimen {slide_id} not found")
    data = storage_from_settings().get(slide.key)
    kind = "image/png" if data[:4] == b"\x89PNG" else "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/tiff"
    return Response(content=data, media_type=kind, headers={"Cache-Control": "private, max-age=300"})


@router.get("/{slide_id}/cells", response_model=list[CellOut])
def list_cells(slide_id: SlideId, session: SessionDep, _: Viewer) -> list[CellOut]:
    """Cells of the latest result with probabilities, bbox and the final (reviewed) pattern."""
    row = load_row(session, slide_id)
    if row[1] is None:
        return []
    latest = aliased(Review)
    last_review = (select(func.max(latest.id)).where(latest.cell_id == Cell.id, latest.undone_at.is_(None))
                   .correlate(Cell).scalar_subquery())
    rows = session.execute(select(Cell, Review.new_value, Review.id).outerjoin(Review, Review.id == last_review)
                           .where(Cell.attempt_id == row[1].attempt_id).order_by(Cell.index)).all()
    out = []
    for cell, review_value, review_id in rows:
        item = CellOut.model_validate(cell)
        item.final_pattern, item.reviewed = review_value or cell.predicted_pattern, review_value is not None
        item.review_id = review_id
        out.append(item)
    return out
