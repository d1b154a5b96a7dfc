"""Readiness reflects the real dependencies."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from db.session import get_engine
from hep2.settings import get_settings

pytestmark = pytest.mark.integration


def test_live_and_ready_on_real_services(service_env: dict[str, str]) -> None:
    client = TestClient(create_app())
    assert client.get("/health/live").json() == {"status": "ok"}
    body = client.get("/health/ready").json()
    assert body == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}


def ready_with(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> Any:
    """GET /health/ready with one setting pointing at a dead address (settings and engines rebuilt)."""
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    get_engine.cache_clear()
    try:
        return TestClient(create_app()).get("/health/ready")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
        get_engine.cache_clear()


def test_ready_reports_unreachable_database(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    response = ready_with(monkeypatch, "HEP2_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/none")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("error: OperationalError")
    assert response.json()["checks"]["storage"] == "ok"


def test_ready_reports_unreachable_broker(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    response = ready_with(monkeypatch, "HEP2_BROKER_URL", "redis://127.0.0.1:1/0")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"].startswith("error")
    assert response.json()["checks"]["database"] == "ok"
