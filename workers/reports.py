"""Specimen reports in the database: read a specimen's images with their final values, aggregate them
(:mod:`analysis.report`) and keep the versions.

``recompute`` is the one function that builds a report; the worker calls it when an image finishes
(``hep2.update_report``), the service layer when a report is read, reviewed or signed out. It is idempotent:
a report whose content did not change is returned as it is. A draft is updated in place; once a version is
signed out it never changes, and a change of what it states (:func:`clinical`: result, titer, patterns,
intensity, the images and their final calls) becomes a new draft version (an amendment).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from analysis.report import ImageReading, ReportConfig, aggregate, dilution_denominator, is_positive
from db.models import Cell, Patient, Report, ReportStatus, Review, SlideImage, SlideStatus, Specimen, SpecimenResult

NO_ACCESSION = "specimen-"
"""Label of a specimen without an accession (an image without a sidecar specimen id): ``specimen-<id>``."""


def accession_of(specimen: Specimen) -> str:
    return specimen.accession or f"{NO_ACCESSION}{specimen.id}"


def find_specimen(session: Session, accession: str) -> Specimen | None:
    """The specimen with this accession, else ``specimen-<id>`` for one without an accession."""
    specimen = session.scalar(select(Specimen).where(Specimen.accession == accession))
    if specimen is None and accession.startswith(NO_ACCESSION) and accession[len(NO_ACCESSION):].isdigit():
        candidate = session.get(Specimen, int(accession[len(NO_ACCESSION):]))
        if candidate is not None and candidate.accession is None:
            specimen = candidate
    return specimen


def specimen_of_slide(session: Session, slide_id: int) -> Specimen | None:
    """The slide's specimen; an image without one becomes a specimen (and so a report) of its own."""
    slide = session.get(SlideImage, slide_id)
    if slide is None:
        return None
    if slide.specimen is None:
        slide.specimen = Specimen()
        session.flush()
    return slide.specimen


def _latest_reviews(session: Session, result_ids: list[int]) -> dict[int, dict[str, str]]:
    out: dict[int, dict[str, str]] = {}
    rows = session.execute(select(Review.specimen_result_id, Review.field, Review.new_value)
                           .where(Review.specimen_result_id.in_(result_ids)).order_by(Review.id))
    for result_id, field_name, value in rows:
        out.setdefault(result_id, {})[field_name] = value
    return out


def build_content(session: Session, specimen: Specimen, config: ReportConfig) -> dict[str, Any]:
    """The aggregated report of a specimen (deterministic: the same data give the same content)."""
    slides = list(session.scalars(select(SlideImage).where(SlideImage.specimen_id == specimen.id)
                                  .order_by(SlideImage.id)))
    latest_ids = dict(session.execute(
        select(SpecimenResult.slide_image_id, func.max(SpecimenResult.id))
        .where(SpecimenResult.slide_image_id.in_([s.id for s in slides]))
        .group_by(SpecimenResult.slide_image_id)).all())
    results = {r.slide_image_id: r for r in session.scalars(
        select(SpecimenResult).where(SpecimenResult.id.in_(list(latest_ids.values()))))}
    reviews = _latest_reviews(session, [r.id for r in results.values()])
    readings, images = [], []
    for slide in slides:
        result = results.get(slide.id)
        analysed = result is not None and slide.status in (SlideStatus.DONE, SlideStatus.NEEDS_REVIEW)
        reviewed = reviews.get(result.id, {}) if result else {}
        pattern = reviewed.get("pattern", result.pattern) if result else None
        second = result.second_pattern if result and pattern == result.pattern else None
        reading = ImageReading(
            slide_id=slide.id, dilution=slide.dilution, status=slide.status.value, analysed=analysed,
            pattern=pattern, intensity=reviewed.get("intensity", result.intensity_class) if result else None,
            second_pattern=second, confidence=result.confidence if result else None,
            needs_review=bool(result and result.needs_review), review_reason=result.review_reason if result else None,
            reviewed=bool(reviewed))
        readings.append(reading)
        images.append({
            "slide_id": slide.id, "name": slide.key.rsplit("/", 1)[-1], "well": slide.well,
            "dilution": slide.dilution, "denominator": dilution_denominator(slide.dilution),
            "status": slide.status.value, "status_reason": slide.status_reason,
            "result_id": result.id if result else None, "pattern": reading.pattern, "second_pattern": second,
            "model_pattern": result.pattern if result else None, "icap": config.icap_codes.get(pattern or ""),
            "intensity": reading.intensity, "intensity_index": round(result.intensity_index, 3) if result else None,
            "confidence": round(result.confidence, 4) if result else None,
            "cell_count": result.cell_count if result else 0, "needs_review": reading.needs_review,
            "review_reason": reading.review_reason, "reviewed": reading.reviewed, "positive": is_positive(reading),
            "links": {"detail": f"/v1/specimens/{slide.id}", "cells": f"/v1/specimens/{slide.id}/cells",
                      "dashboard": f"/dashboard/#/specimen/{slide.id}"},
        })
    summary = aggregate(readings, config)
    patterns = summary.patterns
    for entry in patterns:
        entry["representative_cells"] = representative_cells(
            session, [results[i].attempt_id for i in entry["images"] if i in results], entry["pattern"],
            config.representative_cells)
    patient = session.get(Patient, specimen.patient_id) if specimen.patient_id else None
    received = [s.received_at for s in slides if s.received_at]
    return {"accession": accession_of(specimen), "specimen_id": specimen.id,
            "patient": patient.pseudo_id if patient else None,
            "collected_at": min(received).isoformat() if received else None,
            **summary.as_dict(), "images": images}


def representative_cells(session: Session, attempt_ids: list[int], pattern: str, limit: int) -> list[dict[str, Any]]:
    """The most confident interphase cells of ``pattern`` (their final class) in these attempts."""
    if not attempt_ids or limit == 0:
        return []
    latest_cell_review = (select(Review.new_value).where(Review.cell_id == Cell.id).order_by(Review.id.desc())
                          .limit(1).correlate(Cell).scalar_subquery())
    final = func.coalesce(latest_cell_review, Cell.predicted_pattern)
    cells = session.scalars(select(Cell).where(Cell.attempt_id.in_(attempt_ids), final == pattern,
                                               Cell.mitotic.is_(False))
                            .order_by(Cell.confidence.desc(), Cell.id).limit(limit))
    return [{"cell_id": c.id, "slide_id": c.slide_image_id, "bbox": [c.bbox_x, c.bbox_y, c.bbox_w, c.bbox_h],
             "confidence": round(c.confidence, 4)} for c in cells]


IMAGE_FACTS = ("slide_id", "dilution", "status", "pattern", "second_pattern", "intensity")


def clinical(content: dict[str, Any]) -> dict[str, Any]:
    """What a signed-out report states: a change here is an amendment. Review flags, representative cells,
    confidences and links are not (a signed-out version keeps them as they were)."""
    return {"result": content["result"], "intensity": content["intensity"], "titer": content["titer"],
            "patterns": [{k: p[k] for k in ("pattern", "icap", "compartment", "endpoint")}
                         for p in content["patterns"]],
            "images": [{k: i[k] for k in IMAGE_FACTS} for i in content["images"]], "patient": content["patient"]}


def content_hash(content: dict[str, Any]) -> str:
    """sha256 of the clinical part of a report's content."""
    return hashlib.sha256(json.dumps(clinical(content), sort_keys=True, default=str).encode()).hexdigest()


def latest_report(session: Session, specimen_id: int) -> Report | None:
    return session.scalar(select(Report).where(Report.specimen_id == specimen_id)
                          .order_by(Report.version.desc()).limit(1))


def recompute(session: Session, specimen: Specimen, config: ReportConfig) -> Report:
    """The specimen's current report version, rebuilt from its images (the caller commits).

    The specimen row is locked first, so two workers finishing images of one specimen at once build the
    report one after the other."""
    session.execute(select(Specimen.id).where(Specimen.id == specimen.id).with_for_update())
    content = build_content(session, specimen, config)
    digest = content_hash(content)
    latest = latest_report(session, specimen.id)
    if latest is not None and latest.status is ReportStatus.DRAFT:
        if latest.content != content:  # a draft follows every change in place
            latest.content, latest.content_hash = content, digest
            session.flush()
        return latest
    if latest is not None and latest.content_hash == digest:
        return latest  # signed out, and nothing it states has changed
    report = Report(specimen_id=specimen.id, version=(latest.version + 1) if latest else 1,
                    status=ReportStatus.DRAFT, content=content, content_hash=digest)
    session.add(report)
    session.flush()
    return report


def recompute_for_slide(session: Session, slide_id: int, config: ReportConfig) -> Report | None:
    specimen = specimen_of_slide(session, slide_id)
    return recompute(session, specimen, config) if specimen is not None else None


def signed_out_before(session: Session, report: Report) -> Report | None:
    """The latest signed-out version older than ``report`` (what an amendment corrects)."""
    return session.scalar(select(Report).where(Report.specimen_id == report.specimen_id,
                                               Report.version < report.version,
                                               Report.status != ReportStatus.DRAFT)
                          .order_by(Report.version.desc()).limit(1))


def report_document(report: Report) -> dict[str, Any]:
    """The report as the API, the CLI and the messages see it: content plus version and sign-out."""
    return {**report.content, "report_id": report.id, "version": report.version, "status": report.status.value,
            "signed_out_by": report.signed_out_by,
            "signed_out_at": report.signed_out_at.isoformat() if report.signed_out_at else None,
            "amendment_reason": report.amendment_reason,
            "created_at": report.created_at.isoformat() if report.created_at else None,
            "updated_at": report.updated_at.isoformat() if report.updated_at else None}
