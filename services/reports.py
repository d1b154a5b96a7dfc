"""Specimen reports: read (JSON, FHIR, HL7), list versions, sign out. Shared by the API and the CLI.

The report itself is built in one place, :func:`workers.reports.recompute` (rules: :mod:`analysis.report`);
the messages in :mod:`analysis.report_messages`. Sign-out writes the HL7 message into the LIS outbox in the
same transaction, then queues ``hep2.send_to_lis`` (docs/reports.md).
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

import workers.celery_app as broker
from analysis.config import load_config
from analysis.report import ReportConfig
from analysis.report_messages import build_fhir, build_hl7
from db import audit
from db.base import utcnow
from db.models import LisOutbox, Report, ReportStatus, Specimen
from hep2.settings import get_settings
from services import ConflictError, NotFoundError
from workers import reports
from workers.routing import TaskName

Format = Literal["json", "fhir", "hl7"]
FORMATS: tuple[str, ...] = ("json", "fhir", "hl7")


def report_config() -> ReportConfig:
    """The ``report`` section of the lab's pipeline config (``HEP2_PIPELINE_CONFIG``)."""
    return load_config(get_settings().pipeline_config).report


def _specimen(session: Session, accession: str) -> Specimen:
    specimen = reports.find_specimen(session, accession)
    if specimen is None:
        raise NotFoundError(f"no specimen with accession {accession!r}")
    return specimen


def current(session: Session, accession: str, config: ReportConfig | None = None) -> Report:
    """The specimen's current report version, brought up to date with its images and reviews (committed)."""
    specimen = _specimen(session, accession)
    report = reports.recompute(session, specimen, config or report_config())
    session.commit()
    return report


def refresh_for_slide(session: Session, slide_id: int) -> Report | None:
    """Recompute the report of a slide's specimen after a review changed it (committed)."""
    report = reports.recompute_for_slide(session, slide_id, report_config())
    session.commit()
    return report


def latest_versions(session: Session, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The latest version of each specimen's report, newest change first (``status``: draft, final,
    corrected), with its LIS delivery state: the list of reports to sign out or to check."""
    newest = (select(Report.specimen_id, func.max(Report.version).label("version"))
              .group_by(Report.specimen_id).subquery("newest"))
    query = (select(Report, LisOutbox.status).join(newest, (newest.c.specimen_id == Report.specimen_id)
                                                   & (newest.c.version == Report.version))
             .outerjoin(LisOutbox, LisOutbox.report_id == Report.id))
    if status:
        query = query.where(Report.status == ReportStatus(status))
    rows = session.execute(query.order_by(Report.updated_at.desc(), Report.id.desc()).limit(limit)).all()
    return [{"accession": r.content.get("accession"), "version": r.version, "status": r.status.value,
             "result": r.content.get("result"), "titer": (r.content.get("titer") or {}).get("text"),
             "patterns": [p["pattern"] for p in r.content.get("patterns", [])],
             "needs_review": r.content.get("needs_review"), "images": len(r.content.get("images", [])),
             "patient": r.content.get("patient"), "updated_at": r.updated_at.isoformat(),
             "signed_out_at": r.signed_out_at.isoformat() if r.signed_out_at else None,
             "lis": lis_status.value if lis_status else None} for r, lis_status in rows]


def version(session: Session, accession: str, number: int) -> Report:
    specimen = _specimen(session, accession)
    report = session.scalar(select(Report).where(Report.specimen_id == specimen.id, Report.version == number))
    if report is None:
        raise NotFoundError(f"report {accession!r} has no version {number}")
    return report


def versions(session: Session, accession: str) -> list[Report]:
    specimen = _specimen(session, accession)
    return list(session.scalars(select(Report).where(Report.specimen_id == specimen.id).order_by(Report.version)))


def control_id(report: Report, config: ReportConfig) -> str:
    """MSH-10 of a report version: stable, so that the LIS can discard a repeated delivery."""
    return f"{config.control_id_prefix}{report.id}"


def document(report: Report, session: Session) -> dict[str, Any]:
    """The JSON report: content, version, sign-out, the LIS delivery state and the other versions."""
    doc = reports.report_document(report)
    outbox = session.scalar(select(LisOutbox).where(LisOutbox.report_id == report.id))
    doc["lis"] = None if outbox is None else {
        "control_id": outbox.control_id, "status": outbox.status.value, "attempts": outbox.attempts,
        "ack": outbox.ack_code, "sent_at": outbox.sent_at.isoformat() if outbox.sent_at else None,
        "last_error": outbox.last_error}
    doc["versions"] = [{"version": r.version, "status": r.status.value, "signed_out_by": r.signed_out_by,
                        "signed_out_at": r.signed_out_at.isoformat() if r.signed_out_at else None,
                        "amendment_reason": r.amendment_reason}
                       for r in session.scalars(select(Report).where(Report.specimen_id == report.specimen_id)
                                                .order_by(Report.version))]
    return doc


def render(session: Session, report: Report, fmt: str, config: ReportConfig | None = None) -> dict[str, Any] | str:
    """The report as ``json`` (dict), ``fhir`` (a DiagnosticReport, dict) or ``hl7`` (ER7 text)."""
    config = config or report_config()
    if fmt == "json":
        return document(report, session)
    doc = reports.report_document(report)
    if fmt == "fhir":
        return build_fhir(doc, config)
    if fmt == "hl7":
        outbox = session.scalar(select(LisOutbox).where(LisOutbox.report_id == report.id))
        if outbox is not None:
            return outbox.message  # exactly what was (or will be) sent
        return build_hl7(doc, config, control_id(report, config), report.updated_at or utcnow())
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def sign_out(session: Session, accession: str, actor: str, signer: str, reason: str | None = None,
             expected_version: int | None = None, config: ReportConfig | None = None) -> Report:
    """Sign the current report version out (final, or corrected when an earlier version was signed out),
    audited; its HL7 message goes into the outbox in the same transaction and is queued after the commit.

    Conflicts: already signed out, images still being analysed, images needing review without a review, an
    amendment without a reason, or ``expected_version`` not the current one (someone changed it meanwhile).
    """
    config = config or report_config()
    specimen = _specimen(session, accession)
    report = reports.recompute(session, specimen, config)
    if expected_version is not None and expected_version != report.version:
        raise ConflictError(f"report {accession} is at version {report.version}, not {expected_version}")
    if report.status is not ReportStatus.DRAFT:
        raise ConflictError(f"report {accession} version {report.version} is already signed out "
                            f"({report.status.value} by {report.signed_out_by})")
    content = report.content
    if content.get("pending_images"):
        raise ConflictError(f"report {accession}: {content['pending_images']} image(s) still being analysed")
    unreviewed = [i["slide_id"] for i in content["images"] if i["needs_review"] and not i["reviewed"]]
    if unreviewed:
        raise ConflictError(f"report {accession}: review image(s) {', '.join(map(str, unreviewed))} first")
    if not content["images"] or content["result"] == "indeterminate":
        raise ConflictError(f"report {accession} has no analysed image")
    previous = reports.signed_out_before(session, report)
    if previous is not None and not (reason and reason.strip()):
        raise ConflictError(f"report {accession} was signed out as version {previous.version}; "
                            "an amendment needs a reason")
    now = utcnow()
    report.status = ReportStatus.CORRECTED if previous is not None else ReportStatus.FINAL
    report.signed_out_by, report.signed_out_at = signer, now
    report.amendment_reason = reason.strip() if previous is not None and reason else None
    session.flush()
    cid = control_id(report, config)
    outbox = LisOutbox(report_id=report.id, control_id=cid, next_attempt_at=now,
                       message=build_hl7(reports.report_document(report), config, cid, now))
    session.add(outbox)
    session.flush()
    audit.record(session, actor, "report.sign_out", "report", report.id, accession=accession,
                 version=report.version, status=report.status.value, reason=report.amendment_reason,
                 outbox=outbox.id, control_id=cid)
    session.commit()
    broker.celery_client().send_task(TaskName.SEND_TO_LIS, args=[outbox.id])
    return report


def resend(session: Session, accession: str, number: int, actor: str) -> LisOutbox:
    """Queue the delivery of a signed-out version again (e.g. after fixing the LIS address). A message the
    LIS has ACKed is not sent again (conflict)."""
    report = version(session, accession, number)
    outbox = session.scalar(select(LisOutbox).where(LisOutbox.report_id == report.id))
    if outbox is None:
        raise ConflictError(f"report {accession} version {number} is not signed out")
    if outbox.status.value == "sent":
        raise ConflictError(f"report {accession} version {number} was delivered at {outbox.sent_at}")
    audit.record(session, actor, "report.resend", "report", report.id, outbox=outbox.id)
    session.commit()
    broker.celery_client().send_task(TaskName.SEND_TO_LIS, args=[outbox.id])
    return outbox
