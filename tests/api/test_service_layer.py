"""CLI and API call the same service functions: the same audit rows, the same state checks (real PostgreSQL)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from cli.main import app
from db.models import AuditEvent, ModelTask, RunStatus, SlideStatus, TrainingRun
from db.session import session_scope
from tests.api.conftest import SentTasks, auth, seed_specimen

pytestmark = pytest.mark.integration


def _audit(action: str, entity_id: int) -> list[AuditEvent]:
    with session_scope() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action,
                                                             AuditEvent.entity_id == str(entity_id))))


def _run(status: RunStatus) -> int:
    with session_scope() as session:
        run = TrainingRun(task=ModelTask.CELL_PATTERN, trigger="test", requested_by="test", parameters={},
                          status=status, folds=5)
        session.add(run)
        session.flush()
        return run.id


def test_rerun_is_audited_and_queued_from_api_and_cli(client: TestClient, keys: dict[str, str],
                                                      sent: SentTasks) -> None:
    by_api = seed_specimen(status=SlideStatus.FAILED, with_result=False).slide_id
    by_cli = seed_specimen(status=SlideStatus.FAILED, with_result=False).slide_id
    assert client.post(f"/v1/jobs/{by_api}/rerun", headers=auth(keys["ops"])).status_code == 202
    result = CliRunner().invoke(app, ["jobs", "rerun", str(by_cli), "--actor", "ops-on-call"])
    assert result.exit_code == 0, result.output
    assert [e.actor for e in _audit("job.rerun", by_api)] == ["key:" + str(_key_id("test-ops")) + ":test-ops"]
    assert [e.actor for e in _audit("job.rerun", by_cli)] == ["ops-on-call"]
    assert ("hep2.analyze_slide", by_api) in sent and ("hep2.analyze_slide", by_cli) in sent


def test_rerun_of_rejected_input_is_refused_by_both(client: TestClient, keys: dict[str, str],
                                                    sent: SentTasks) -> None:
    slide = seed_specimen(status=SlideStatus.REJECTED, with_result=False).slide_id
    assert client.post(f"/v1/jobs/{slide}/rerun", headers=auth(keys["ops"])).status_code == 409
    result = CliRunner().invoke(app, ["jobs", "rerun", str(slide)])
    assert result.exit_code == 1 and "not queued" in result.output
    assert not sent and not _audit("job.rerun", slide)


def test_cancelling_a_finished_run_is_a_conflict_for_both(client: TestClient, keys: dict[str, str]) -> None:
    run_id = _run(RunStatus.SUCCEEDED)
    assert client.post(f"/v1/training-runs/{run_id}/cancel", headers=auth(keys["ops"])).status_code == 409
    result = CliRunner().invoke(app, ["train", "cancel", str(run_id)])
    assert result.exit_code == 1 and "succeeded" in result.output
    with session_scope() as session:
        assert not session.get(TrainingRun, run_id).cancel_requested
    assert not _audit("training.cancel", run_id)


def test_cancelling_a_queued_run_is_audited_from_both(client: TestClient, keys: dict[str, str]) -> None:
    by_api, by_cli = _run(RunStatus.QUEUED), _run(RunStatus.RUNNING)
    assert client.post(f"/v1/training-runs/{by_api}/cancel", headers=auth(keys["ops"])).status_code == 202
    assert CliRunner().invoke(app, ["train", "cancel", str(by_cli)]).exit_code == 0
    for run_id in (by_api, by_cli):
        with session_scope() as session:
            assert session.get(TrainingRun, run_id).cancel_requested
        assert len(_audit("training.cancel", run_id)) == 1


def _key_id(name: str) -> int:
    from db.models import ApiKey

    with session_scope() as session:
        return session.scalar(select(ApiKey.id).where(ApiKey.name == name))


def test_report_sign_out_from_api_and_cli(client: TestClient, keys: dict[str, str], sent: SentTasks) -> None:
    by_api, by_cli = seed_specimen(), seed_specimen()
    response = client.post(f"/v1/reports/{by_api.accession}/sign-out", json={}, headers=auth(keys["reviewer"]))
    assert response.status_code == 201, response.text
    result = CliRunner().invoke(app, ["sign-out", by_cli.accession, "--as", "dr-cli"])
    assert result.exit_code == 0, result.output
    api_audit = _audit("report.sign_out", response.json()["report_id"])
    with session_scope() as session:
        cli_audit = session.scalar(select(AuditEvent).where(
            AuditEvent.action == "report.sign_out", AuditEvent.details["accession"].as_string() == by_cli.accession))
    assert [e.actor for e in api_audit] == ["key:" + str(_key_id("test-reviewer")) + ":test-reviewer"]
    assert cli_audit is not None and cli_audit.actor == "cli:dr-cli" and cli_audit.details["status"] == "final"
    assert [name for name, *_ in sent] == ["hep2.send_to_lis", "hep2.send_to_lis"]
    # a second sign-out is refused by both, and nothing more is queued
    assert client.post(f"/v1/reports/{by_api.accession}/sign-out", json={},
                       headers=auth(keys["reviewer"])).status_code == 409
    again = CliRunner().invoke(app, ["sign-out", by_cli.accession, "--as", "dr-cli"])
    assert again.exit_code == 1 and "already signed out" in again.output
    assert len(sent) == 2
