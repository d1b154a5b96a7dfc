"""``hep2 report ACCESSION [--format json|fhir|hl7]``: the current specimen report of the configured state
(embedded or production), built by the same service function as ``GET /v1/reports/{accession}``; and
``hep2 sign-out ACCESSION --as NAME [--reason ...]``, the same service function as the sign-out route."""

from __future__ import annotations

import json

import typer

from cli.apps import app
from db.session import session_scope
from services import ConflictError, NotFoundError
from services import reports as report_service


@app.command("report")
def report(accession: str = typer.Argument(..., help="The specimen's accession (sidecar specimen_id)."),
           format: str = typer.Option("json", "--format", "-f",
                                      help="json, fhir (R4 DiagnosticReport) or hl7 (v2.5.1 ORU^R01)."),
           version: int | None = typer.Option(None, help="A given version (default: the current one).")) -> None:
    """Print a specimen report: every image of the accession, the end-point titer and pattern(s)."""
    if format not in report_service.FORMATS:
        raise typer.BadParameter(f"expected one of {', '.join(report_service.FORMATS)}", param_hint="--format")
    with session_scope() as session:
        try:
            row = (report_service.version(session, accession, version) if version
                   else report_service.current(session, accession))
        except (NotFoundError, ConflictError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        body = report_service.render(session, row, format)
    typer.echo(body.replace("\r", "\n") if isinstance(body, str) else json.dumps(body, indent=2,
                                                                                  ensure_ascii=False))


@app.command("sign-out")
def sign_out(accession: str = typer.Argument(..., help="The specimen's accession."),
             signer: str = typer.Option(..., "--as", help="Who signs the report out (recorded and sent as OBR-32)."),
             reason: str | None = typer.Option(None, help="Required for an amendment (an earlier version was "
                                                          "signed out)."),
             version: int | None = typer.Option(None, help="Refuse if the current version is not this one.")) -> None:
    """Sign the current report version out (audited) and queue its HL7 message for the LIS."""
    with session_scope() as session:
        try:
            row = report_service.sign_out(session, accession, f"cli:{signer}", signer, reason, version)
        except (NotFoundError, ConflictError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"{accession} version {row.version} signed out ({row.status.value}) by {signer}; "
                   "queued for the LIS")
