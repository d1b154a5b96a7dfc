"""``/v1/reports``: the specimen report per accession (JSON, FHIR R4, HL7 v2) and its sign-out.

Everything is done by :mod:`services.reports` (shared with ``hep2 report``); this module translates its
errors (404 / 409) and picks the media type.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from api.auth import Reviewer, SessionDep, Viewer
from services import ConflictError, NotFoundError
from services import reports as report_service

router = APIRouter(prefix="/v1/reports", tags=["reports"])
Accession = Annotated[str, Path(min_length=1, max_length=64, description="the sidecar's specimen_id, or "
                                                                          "specimen-<id> for one without")]
MEDIA = {"json": "application/json", "fhir": "application/fhir+json", "hl7": "x-application/hl7-v2+er7"}


class SignOutIn(BaseModel):
    """``version``: the version the reviewer looked at (409 if it changed meanwhile); ``reason``: required for
    an amendment (a version after a signed-out one)."""

    version: int | None = Field(None, ge=1, le=2**31 - 1)
    reason: str | None = Field(None, max_length=2000)


def _translate(exc: Exception) -> HTTPException:
    code = status.HTTP_404_NOT_FOUND if isinstance(exc, NotFoundError) else status.HTTP_409_CONFLICT
    return HTTPException(code, str(exc))


@router.get("")
def list_reports(session: SessionDep, _: Viewer, status: Literal["draft", "final", "corrected"] | None = None,
                 limit: Annotated[int, Query(ge=1, le=200)] = 50) -> list[dict[str, Any]]:
    """The latest version of each specimen's report (newest change first), optionally of one status:
    ``draft`` lists the reports awaiting sign-out."""
    return report_service.latest_versions(session, status, limit)


@router.get("/{accession}", responses={200: {"content": {m: {} for m in MEDIA.values()}}})
def get_report(accession: Accession, session: SessionDep, _: Viewer,
               format: Literal["json", "fhir", "hl7"] = "json",
               version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> Response:
    """The current report (recomputed from the images and reviews), or ``version``; as ``format``."""
    try:
        report = (report_service.version(session, accession, version) if version
                  else report_service.current(session, accession))
    except (NotFoundError, ConflictError) as exc:
        raise _translate(exc) from exc
    body: Any = report_service.render(session, report, format)
    if format == "hl7":
        return PlainTextResponse(body, media_type=MEDIA["hl7"])
    return JSONResponse(body, media_type=MEDIA[format])


@router.post("/{accession}/sign-out", status_code=status.HTTP_201_CREATED)
def sign_out(accession: Accession, body: SignOutIn, session: SessionDep, who: Reviewer) -> dict[str, Any]:
    """Sign the current version out (final; corrected for an amendment, which needs a reason); the HL7 message
    is queued for the LIS. 409 when already signed out, images are pending or unreviewed, or no reason."""
    try:
        report = report_service.sign_out(session, accession, who.actor, who.name, body.reason, body.version)
    except (NotFoundError, ConflictError) as exc:
        raise _translate(exc) from exc
    return report_service.document(report, session)
