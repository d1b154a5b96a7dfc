"""POST /v1/events/s3: authentication, validation, and the path to a registered slide."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote_plus

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from db.models import SlideImage
from db.session import session_scope
from hep2.settings import get_settings
from hep2.storage import storage_from_settings

pytestmark = pytest.mark.integration
TOKEN = "s3cret-webhook-token"


def minio_event(bucket: str, key: str, etag: str = "abc", event: str = "s3:ObjectCreated:Put") -> dict[str, Any]:
    """The body MinIO's webhook target posts (AWS sends the same Records without the top-level keys)."""
    return {"EventName": event, "Key": f"{bucket}/{key}", "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": "2026-11-22T10:00:00Z",
        "eventName": event, "userIdentity": {"principalId": "scanner"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
               "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": {"key": quote_plus(key), "size": 10, "eTag": etag, "sequencer": "1"}}}]}


class SentTasks(list):
    def send_task(self, name: str, args: list[Any]) -> None:
        self.append((name, *args))


@pytest.fixture
def client(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("HEP2_WEBHOOK_TOKEN", TOKEN)
    get_settings.cache_clear()
    yield TestClient(create_app(), raise_server_exceptions=False)
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> SentTasks:
    """Records what the endpoint would send, instead of sending it (for the rejection cases)."""
    recorder = SentTasks()
    monkeypatch.setattr("workers.celery_app.celery_client", lambda settings=None: recorder)
    return recorder


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("headers", [{}, auth("wrong"), {"Authorization": TOKEN}, {"Authorization": "Basic eA=="}])
def test_unauthenticated_events_are_refused(client: TestClient, sent: SentTasks, headers: dict[str, str]) -> None:
    response = client.post("/v1/events/s3", json=minio_event("hep2-test", "inbox/a.png"), headers=headers)
    assert response.status_code == 401 and sent == []


@pytest.mark.parametrize("body", [
    {}, {"Records": []}, {"Records": [{"eventName": "s3:ObjectCreated:Put"}]},
    {"Records": [{"eventName": "x", "s3": {"bucket": {"name": "b"}, "object": {"key": 5, "size": -1}}}]},
    [1, 2, 3], "not json",
])
def test_malformed_events_are_refused(client: TestClient, sent: SentTasks, body: Any) -> None:
    response = client.post("/v1/events/s3", json=body, headers=auth())
    assert response.status_code == 422 and sent == []
    assert "Traceback" not in response.text


def test_records_are_filtered(client: TestClient, sent: SentTasks) -> None:
    records = [minio_event("hep2-test", k)["Records"][0] for k in
               ("inbox/well 1.png", "inbox/well 1.png", "inbox/well 1.png.json", "models/x.bin", "inbox/../x.png")]
    records.append(minio_event("other-bucket", "inbox/b.png")["Records"][0])
    records.append(minio_event("hep2-test", "inbox/c.png", event="s3:ObjectRemoved:Delete")["Records"][0])
    body = client.post("/v1/events/s3", json={"Records": records}, headers=auth()).json()
    assert sent == [("hep2.register_upload", "inbox/well 1.png")]  # decoded, once
    assert body["queued"] == 1
    assert [r["action"] for r in body["records"]] == ["queued", "queued"] + ["ignored"] * 5


def test_event_leads_to_a_registered_slide(client: TestClient, celery_worker: str) -> None:
    key = "inbox/events/slide with spaces+plus.png"
    info = storage_from_settings().put(key, b"\x89PNG\r\n\x1a\n event test")
    for _ in range(2):  # a repeated event
        response = client.post("/v1/events/s3", json=minio_event("hep2-test", key, info.etag), headers=auth())
        assert response.status_code == 202, response.text
    rows: list[SlideImage] = []
    for _ in range(60):
        with session_scope() as session:
            rows = list(session.scalars(select(SlideImage).where(SlideImage.key == key)))
        if rows:
            break
        time.sleep(0.5)
    time.sleep(2)  # let the second event's task run too
    with session_scope() as session:
        assert session.scalars(select(SlideImage).where(SlideImage.key == key)).all().__len__() == 1
    assert rows[0].etag == info.etag
