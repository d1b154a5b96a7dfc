"""``hep2 apikey create|list|revoke``: the key is printed once, stored hashed, and revocation is immediate."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from cli.main import app
from db.models import ApiKey, AuditEvent
from db.session import session_scope
from tests.api.conftest import auth

pytestmark = pytest.mark.integration


def test_apikey_commands(client: TestClient, keys: dict[str, str]) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["apikey", "create", "--role", "reviewer", "--name", "dr cli"])
    assert created.exit_code == 0, created.output
    key = re.search(r"hep2_\S+", created.output).group(0)
    key_id = int(re.search(r"id (\d+)", created.output).group(1))
    with session_scope() as session:
        row = session.get(ApiKey, key_id)
        assert key not in (row.key_hash, row.prefix) and len(row.key_hash) == 64 and key.startswith(row.prefix)
        assert session.scalar(select(AuditEvent).where(AuditEvent.action == "apikey.create",
                                                       AuditEvent.entity_id == str(key_id)))
    assert client.get("/v1/me", headers=auth(key)).json() == {"name": "dr cli", "role": "reviewer"}
    listed = runner.invoke(app, ["apikey", "list"])
    assert "dr cli" in listed.output and key not in listed.output
    assert runner.invoke(app, ["apikey", "revoke", str(key_id)]).exit_code == 0
    assert client.get("/v1/me", headers=auth(key)).status_code == 401
    assert runner.invoke(app, ["apikey", "create", "--role", "king", "--name", "x"]).exit_code != 0
