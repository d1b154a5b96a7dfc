"""Specimen reports on the real services: a dilution series analysed by a real worker becomes one report;
review and sign-out through the API; HL7 delivery over MLLP to a listener started here (a stand-in for the
hospital's LIS), through the outbox, with the listener down and with the sending worker killed mid-send.

The tests of this module run in order and build on each other (one accession, versions 1 to 3).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from sqlalchemy import select

from analysis.report_messages import parse_hl7
from api.app import create_app
from db.base import utcnow
from db.models import AuditEvent, LisOutbox, Report, ReportStatus, Role, Specimen
from db.session import session_scope
from hep2.settings import get_settings
from hep2.storage import storage_from_settings
from hep2.synthetic import synthetic_png
from hep2.vocabulary import Pattern
from services.keys import create_key
from tests.integration import uploads as up
from tests.integration.mock_lis import MockLis
from workers import lis as lis_module

pytestmark = pytest.mark.integration
ACCESSION = "ACC-REPORT-1"
SERIES = [("1:80", 170.0), ("1:160", 140.0), ("1:320", 110.0)]
"""Dilution and brightness of the SYNTHETIC homogeneous fields (brightness 0 would be a negative well)."""


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 240.0, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)


@pytest.fixture(scope="module")
def api(service_env: dict[str, str]) -> Iterator[TestClient]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEP2_WEBHOOK_TOKEN", up.WEBHOOK_TOKEN)
        get_settings.cache_clear()
        yield TestClient(create_app(), raise_server_exceptions=False)
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def reviewer(service_env: dict[str, str]) -> dict[str, str]:
    with session_scope() as session:
        _, key = create_key(session, "dr-report", Role.REVIEWER, actor="test")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def lis(service_env: dict[str, str]) -> Iterator[MockLis]:
    server = MockLis(int(service_env["HEP2_LIS_PORT"]))
    yield server
    server.stop()


def upload_image(api: TestClient, name: str, dilution: str, brightness: float, seed: int) -> str:
    storage = storage_from_settings()
    key = f"inbox/reports/{name}.png"
    sidecar = {"patient_id": "PSEUDO-REPORT-1", "specimen_id": ACCESSION, "well": f"A{seed}", "dilution": dilution}
    storage.put(key + ".json", json.dumps(sidecar).encode(), "application/json")  # the sidecar comes first
    uploads = up.upload(storage, [(key, synthetic_png(Pattern.HOMOGENEOUS, seed=seed, size=(320, 400), cells=10,
                                                      brightness=brightness))])
    up.send_events(api, storage.bucket, uploads)
    return key


def stored_report() -> Report | None:
    """The latest report version in the database (as the worker left it; no API call recomputes it)."""
    with session_scope() as session:
        specimen = session.scalar(select(Specimen).where(Specimen.accession == ACCESSION))
        if specimen is None:
            return None
        return session.scalar(select(Report).where(Report.specimen_id == specimen.id)
                              .order_by(Report.version.desc()).limit(1))


def report_with(images: int) -> Callable[[], Report | None]:
    def check() -> Report | None:
        report = stored_report()
        analysed = [i for i in (report.content["images"] if report else []) if i["status"] in ("done", "needs_review")]
        return report if report and len(analysed) == images and report.content["complete"] else None
    return check


def outbox(report_id: int) -> LisOutbox | None:
    with session_scope() as session:
        return session.scalar(select(LisOutbox).where(LisOutbox.report_id == report_id))


def test_a_dilution_series_becomes_one_report_and_a_later_image_updates_it(api: TestClient, celery_worker: str,
                                                                           reviewer: dict[str, str]) -> None:
    keys = [upload_image(api, f"series-{i}", dilution, brightness, i + 1)
            for i, (dilution, brightness) in enumerate(SERIES)]
    final = up.wait_final(keys)
    assert set(final.values()) <= {"done", "needs_review"}, final
    report = wait_for("the worker's report of three images", report_with(3))  # hep2.update_report, not the API
    content = report.content
    assert report.version == 1 and report.status.value == "draft"
    assert content["accession"] == ACCESSION and content["patient"] == "PSEUDO-REPORT-1"
    assert [s["dilution"] for s in content["titer"]["series"]] == ["1:80", "1:160", "1:320"]
    calls = [i["pattern"] for i in content["images"]]
    assert content["result"] == "positive", content
    majority = max(set(calls), key=calls.count)
    assert content["patterns"][0]["pattern"] == majority == "homogeneous", calls
    assert content["patterns"][0]["icap"] == "AC-1"
    assert content["titer"]["text"] == "≥1:320"  # positive at every dilution tested
    assert content["patterns"][0]["representative_cells"], "no representative cells"

    # a fourth well at 1:640, negative, arrives later: the same report (a draft: version 1) gets the end-point
    key = upload_image(api, "series-3", "1:640", 0.0, 4)
    assert up.wait_final([key])[key] in {"done", "needs_review"}
    report = wait_for("the report of four images", report_with(4))
    assert report.version == 1 and report.content["titer"]["text"] == "1:320", report.content["titer"]
    assert [s["positive"] for s in report.content["titer"]["series"]] == [True, True, True, False]

    response = api.get(f"/v1/reports/{ACCESSION}", headers=reviewer)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["titer"]["text"] == "1:320" and body["version"] == 1 and len(body["images"]) == 4
    assert all(i["links"]["detail"] == f"/v1/specimens/{i['slide_id']}" for i in body["images"])
    assert api.get("/v1/reports/NO-SUCH-ACCESSION", headers=reviewer).status_code == 404


def test_b_review_sign_out_and_delivery_to_the_lis(api: TestClient, celery_worker: str, reviewer: dict[str, str],
                                                   lis: MockLis) -> None:
    lis.start()
    body = api.get(f"/v1/reports/{ACCESSION}", headers=reviewer).json()
    to_review = [i["slide_id"] for i in body["images"] if i["needs_review"] and not i["reviewed"]]
    if to_review:  # sign-out is refused until every image that needs review has a review
        refused = api.post(f"/v1/reports/{ACCESSION}/sign-out", json={}, headers=reviewer)
        assert refused.status_code == 409 and "review image" in refused.text
        for slide_id in to_review:
            assert api.post(f"/v1/specimens/{slide_id}/review", json={"action": "confirm"},
                            headers=reviewer).status_code == 201
    body = api.get(f"/v1/reports/{ACCESSION}", headers=reviewer).json()
    assert body["review_reasons"] == [] or all("image" not in r["reason"] for r in body["review_reasons"])

    signed = api.post(f"/v1/reports/{ACCESSION}/sign-out", json={"version": body["version"]}, headers=reviewer)
    assert signed.status_code == 201, signed.text
    doc = signed.json()
    assert doc["status"] == "final" and doc["signed_out_by"] == "dr-report" and doc["signed_out_at"]
    again = api.post(f"/v1/reports/{ACCESSION}/sign-out", json={}, headers=reviewer)
    assert again.status_code == 409 and "already signed out" in again.text
    with session_scope() as session:
        audit = session.scalar(select(AuditEvent).where(AuditEvent.action == "report.sign_out")
                               .order_by(AuditEvent.id.desc()).limit(1))
        assert audit.details["accession"] == ACCESSION and audit.details["version"] == 1

    row = wait_for("the ACK of version 1", lambda: (o := outbox(doc["report_id"])) and o.status.value == "sent" and o,
                   timeout_s=60)
    assert row.ack_code == "AA" and row.control_id == f"HEP2R{doc['report_id']}"
    assert lis.count(row.control_id) == 1
    message = lis.results[row.control_id]
    values = {(o["code"], o["sub_id"]): o["value"] for o in message["observations"]}
    assert message["accession"] == ACCESSION and message["status"] == "F" and message["patient"] == "PSEUDO-REPORT-1"
    assert values[("5048-4", None)] == "^1^:^320"  # SN: end-point titer 1:320
    assert values[("49311-4", "1")].startswith("AC-1^homogeneous^ICAP")
    assert values[("8061-4", None)].startswith("260373001^Detected")

    # the same report as HL7 (exactly what was sent), as FHIR (validated), as JSON
    hl7 = api.get(f"/v1/reports/{ACCESSION}?format=hl7", headers=reviewer)
    assert hl7.status_code == 200 and hl7.text == lis.raw[row.control_id]
    assert parse_hl7(hl7.text)["observations"] == message["observations"]
    fhir = api.get(f"/v1/reports/{ACCESSION}?format=fhir", headers=reviewer)
    assert fhir.status_code == 200 and fhir.headers["content-type"].startswith("application/fhir+json")
    resource = DiagnosticReport.model_validate(fhir.json())
    contained = {c.id: c for c in resource.contained}
    assert resource.status == "final" and contained["titer"].valueString == "1:320"
    assert contained["pattern-1"].valueCodeableConcept.coding[0].code == "AC-1"
    assert contained["screen"].interpretation[0].coding[0].code == "POS"
    assert api.get(f"/v1/reports/{ACCESSION}?format=xml", headers=reviewer).status_code == 422


def test_c_amendment_waits_in_the_outbox_while_the_lis_is_down(api: TestClient, celery_worker: str,
                                                               reviewer: dict[str, str], lis: MockLis) -> None:
    lis.stop()
    body = api.get(f"/v1/reports/{ACCESSION}", headers=reviewer).json()
    last = next(i for i in body["images"] if i["dilution"] == "1:320")
    # a confirmation after sign-out changes nothing the report states: no amendment
    assert api.post(f"/v1/specimens/{last['slide_id']}/review", json={"action": "confirm"},
                    headers=reviewer).status_code == 201
    assert api.get(f"/v1/reports/{ACCESSION}", headers=reviewer).json()["version"] == 1
    corrected = api.post(f"/v1/specimens/{last['slide_id']}/review",
                         json={"action": "correct", "intensity": "negative", "comment": "no staining at 1:320"},
                         headers=reviewer)
    assert corrected.status_code == 201
    body = api.get(f"/v1/reports/{ACCESSION}", headers=reviewer).json()
    assert body["version"] == 2 and body["status"] == "draft" and body["titer"]["text"] == "1:160"
    assert [v["status"] for v in body["versions"]] == ["final", "draft"]  # version 1 stays as signed out
    v1 = api.get(f"/v1/reports/{ACCESSION}?version=1", headers=reviewer).json()
    assert v1["titer"]["text"] == "1:320" and v1["status"] == "final"

    no_reason = api.post(f"/v1/reports/{ACCESSION}/sign-out", json={}, headers=reviewer)
    assert no_reason.status_code == 409 and "needs a reason" in no_reason.text
    signed = api.post(f"/v1/reports/{ACCESSION}/sign-out", json={"reason": "1:320 well re-read: negative"},
                      headers=reviewer)
    assert signed.status_code == 201, signed.text
    doc = signed.json()
    assert doc["status"] == "corrected" and doc["version"] == 2

    row = wait_for("three failed attempts", lambda: (o := outbox(doc["report_id"])) and o.attempts >= 3 and o,
                   timeout_s=60)
    assert row.status.value == "pending" and "Connection" in (row.last_error or "")
    assert lis.count(row.control_id) == 0
    lis.start()  # the LIS comes back: the next retry delivers it, once
    row = wait_for("the ACK of version 2", lambda: (o := outbox(doc["report_id"])) and o.status.value == "sent" and o,
                   timeout_s=60)
    time.sleep(2.5)  # longer than the largest retry delay: nothing is sent again
    assert lis.count(row.control_id) == 1
    message = lis.results[row.control_id]
    assert message["status"] == "C" and {o["status"] for o in message["observations"]} == {"C"}
    assert {(o["code"], o["value"]) for o in message["observations"]} >= {("5048-4", "^1^:^160")}
    assert lis.count(f"HEP2R{v1['report_id']}") == 1  # version 1 was not sent again


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _worker_pool(node: str) -> list[int]:
    """The pool processes of this session's ``hep2 worker`` (a child of this test process)."""
    for pid in _children(os.getpid()):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if node.encode() in cmdline:
            return _children(pid)
    return []


def test_d_a_worker_killed_mid_send_does_not_make_a_duplicate(api: TestClient, celery_worker: str,
                                                              reviewer: dict[str, str], lis: MockLis) -> None:
    body = api.get(f"/v1/reports/{ACCESSION}", headers=reviewer).json()
    first = next(i for i in body["images"] if i["dilution"] == "1:80")
    assert api.post(f"/v1/specimens/{first['slide_id']}/review", json={"action": "correct", "pattern": "speckled"},
                    headers=reviewer).status_code == 201
    lis.hold()  # the LIS reads the message and does not answer: the sender waits for its ACK
    signed = api.post(f"/v1/reports/{ACCESSION}/sign-out", json={"reason": "pattern at 1:80 re-read"},
                      headers=reviewer)
    assert signed.status_code == 201, signed.text
    report_id = signed.json()["report_id"]
    control_id = f"HEP2R{report_id}"
    wait_for("the message at the LIS", lambda: lis.count(control_id) >= 1, timeout_s=60)
    pool = _worker_pool(celery_worker)
    assert pool, "the worker has no pool process"
    for pid in pool:
        os.kill(pid, signal.SIGKILL)  # the process sending the message dies before the ACK
    lis.release()
    row = wait_for("the redelivered send", lambda: (o := outbox(report_id)) and o.status.value == "sent" and o,
                   timeout_s=120)
    # At least once with a stable control id: the redelivered task sent the message again with the same MSH-10,
    # and the LIS keeps one result per control id.
    assert row.control_id == control_id and lis.count(control_id) == 2, lis.received
    assert [c for c in lis.results if c == control_id] == [control_id] and lis.results[control_id]["status"] == "C"
    with session_scope() as session:
        assert session.query(LisOutbox).filter(LisOutbox.report_id == report_id).count() == 1
    time.sleep(2.5)
    sent_before = lis.count(control_id)
    time.sleep(2.5)
    assert lis.count(control_id) == sent_before  # sent: never again


def test_e_outbox_claims_sent_busy_and_overdue(service_env: dict[str, str]) -> None:
    """The claim rules of workers.lis.deliver without a worker: a sent row is never sent again, a row another
    sender holds is skipped, and beat's flush finds pending rows whose retry is overdue."""
    settings = get_settings()
    with session_scope() as session:
        sent_row = session.scalar(select(LisOutbox).where(LisOutbox.status == "sent").limit(1))
        assert sent_row is not None
        assert lis_module.deliver(session, sent_row.id, settings) == "already sent"
        specimen = session.scalar(select(Specimen).where(Specimen.accession == ACCESSION))
        report = Report(specimen_id=specimen.id, version=99, status=ReportStatus.FINAL, content={},
                        content_hash="0" * 64)
        session.add(report)
        session.flush()
        row = LisOutbox(report_id=report.id, control_id="TEST-OVERDUE", message="MSH|^~\\&|",
                        next_attempt_at=utcnow() - timedelta(seconds=settings.lis_retry_max_s + 60))
        session.add(row)
        session.flush()
        row_id, report_id = row.id, report.id
    try:
        with session_scope() as session:
            assert row_id in lis_module.overdue(session, settings)
        with session_scope() as holder, session_scope() as sender:
            holder.execute(select(LisOutbox).where(LisOutbox.id == row_id).with_for_update())  # another sender
            assert lis_module.deliver(sender, row_id, settings).startswith("busy")
            holder.rollback()
    finally:
        with session_scope() as session:
            session.query(LisOutbox).filter(LisOutbox.id == row_id).delete()
            session.query(Report).filter(Report.id == report_id).delete()
