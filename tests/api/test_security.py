"""Issue 17 over HTTP: bodies read only after authentication and within a limit, browser security headers,
forged cursors, capped event batches, no start with default secrets, the last admin key.

The body-limit tests talk to a real ``hep2 api`` (uvicorn) process over a socket and watch its memory.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from db import migrate
from db.models import ApiKey, Role
from db.session import session_scope
from hep2.settings import InsecureSettingsError, Settings, get_settings, insecure_settings
from services import ConflictError
from services.keys import create_key, revoke_key
from tests.api.conftest import SentTasks, auth
from tests.conftest import REPO_ROOT, free_port
from tests.integration.test_events import minio_event

pytestmark = pytest.mark.integration
MIB = 1024 * 1024


# ------------------------------------------------------------------------------------- a real server


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextmanager
def api_server(env: dict[str, str], log: Path) -> Iterator[tuple[str, int, int]]:
    """``hep2 api`` on a free port with ``env``: (host, port, pid)."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "api", "--port", str(port)], cwd=REPO_ROOT,
                                env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield "127.0.0.1", port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(api_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, int]]:
    with api_server(api_env, tmp_path_factory.mktemp("api") / "api.log") as running:
        yield running


def post_raw(host: str, port: int, path: str, headers: dict[str, str], body_bytes: int,
             chunked: bool = False) -> tuple[int, float, int]:
    """Stream ``body_bytes`` of JSON-ish filler; return (status, seconds to the answer, bytes the server took
    before answering). Stops sending as soon as the server answers or closes."""
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {body_bytes}")
    chunk = b"[" + b"0," * (64 * 1024)
    started = time.monotonic()
    sent = 0
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sock.setblocking(False)
        answer = b""
        while sent < body_bytes:
            with contextlib.suppress(BlockingIOError):
                answer += sock.recv(65536)
            if answer:
                break
            piece = chunk[: body_bytes - sent]
            data = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
            try:
                sock.sendall(data)
            except BlockingIOError:
                time.sleep(0.001)
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
        sock.setblocking(True)
        while b"\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    return int(answer.split(b" ", 2)[1]), time.monotonic() - started, sent


def test_a_200_mb_unauthenticated_body_is_refused_without_being_read(server: tuple[str, int, int]) -> None:
    """Issue 17.7: before, 3.2 s and +326 MB of API memory; now an answer before the body is read."""
    host, port, pid = server
    before = rss_kib(pid)
    status_declared, seconds_declared, _ = post_raw(host, port, "/v1/events/s3", {}, 200 * MIB)
    status_chunked, seconds_chunked, sent = post_raw(host, port, "/v1/events/s3", {}, 200 * MIB, chunked=True)
    grown_mib = (rss_kib(pid) - before) / 1024
    assert status_declared == 413 and seconds_declared < 2.0  # declared too large: not even authenticated
    assert status_chunked == 401 and seconds_chunked < 2.0, (seconds_chunked, sent)
    assert grown_mib < 30, f"the API grew by {grown_mib:.0f} MiB"


def test_an_authenticated_body_over_the_route_limit_is_refused(server: tuple[str, int, int],
                                                              keys: dict[str, str]) -> None:
    host, port, _ = server
    status_events, _, _ = post_raw(host, port, "/v1/events/s3", auth(keys["scanner"]), 3 * MIB, chunked=True)
    status_review, _, _ = post_raw(host, port, "/v1/api-keys", auth(keys["admin"]), 200 * 1024, chunked=True)
    assert (status_events, status_review) == (413, 413)


def test_wrong_role_is_refused_before_the_body(client: TestClient, keys: dict[str, str]) -> None:
    response = client.post("/v1/api-keys", content=b"{" * 10, headers=auth(keys["viewer"]))
    assert response.status_code == 403  # not 422: the body was never parsed


# ------------------------------------------------------------------------------------- headers, cursors, events


def test_security_headers(client: TestClient, keys: dict[str, str]) -> None:
    for path, headers in (("/v1/me", auth(keys["viewer"])), ("/dashboard/", {}), ("/v1/me", {})):
        response = client.get(path, headers=headers)
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "script-src 'self'" in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"


def cursor(*values: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


@pytest.mark.parametrize("bad", [
    cursor(1e308 * 10, "2026-01-01T00:00:00+00:00", 1),  # inf
    cursor(0, "2026-01-01T00:00:00+00:00", 10**30),
    cursor(10**30, "2026-01-01T00:00:00+00:00", 1),
    cursor(0.5, "2026-01-01T00:00:00+00:00", 1),
    cursor(True, "2026-01-01T00:00:00+00:00", 1),
    cursor(0, "2026-01-01T00:00:00+00:00", 1.5),
    cursor(0, "0001-01-01T00:00:00", 1),
    cursor(0, 12, 1),
    cursor(0, "2026"),
    "W1sxXV0",  # [[1]]
    base64.urlsafe_b64encode(b"[" * 150).decode().rstrip("="),
    "!!",
])
def test_malformed_cursor_is_422(client: TestClient, keys: dict[str, str], bad: str) -> None:
    """Issue 17.9: these gave 500."""
    response = client.get("/v1/specimens", params={"cursor": bad}, headers=auth(keys["viewer"]))
    assert response.status_code == 422, response.text


def test_a_valid_cursor_still_pages(client: TestClient, keys: dict[str, str]) -> None:
    good = cursor(0, "2026-01-01T00:00:00+00:00", 5)
    assert client.get("/v1/specimens", params={"cursor": good}, headers=auth(keys["viewer"])).status_code == 200


def test_event_batches_are_capped(client: TestClient, sent: SentTasks) -> None:
    """Issue 17.10: one request with 1,000 records queued 1,000 tasks; now at most 100 records."""
    record = minio_event("hep2-test", "inbox/cap.png")["Records"][0]
    too_many = client.post("/v1/events/s3", json={"Records": [record] * 101}, headers=auth("api-tests-webhook-token"))
    assert too_many.status_code == 422 and sent == []
    ok = client.post("/v1/events/s3", json={"Records": [record] * 100}, headers=auth("api-tests-webhook-token"))
    assert ok.status_code == 202 and len(sent) == 1


# ------------------------------------------------------------------------------------- insecure defaults


def test_settings_with_default_or_placeholder_secrets_are_insecure_outside_embedded_mode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HEP2_"):
            monkeypatch.delenv(name)
    embedded = Settings(_env_file=None)
    assert embedded.embedded and insecure_settings(embedded) == []
    prod = {"database_url": "postgresql+psycopg://db/hep2", "storage_backend": "s3"}
    problems = " ".join(insecure_settings(Settings(_env_file=None, **prod)))
    assert "HEP2_SIGNING_KEY" in problems
    placeholders = Settings(_env_file=None, **prod, signing_key="change-me-signing-key",
                            webhook_token="change-me-webhook-token", s3_access_key_id="minioadmin",
                            s3_secret_access_key="change-me-s3-secret-key")
    problems = " ".join(insecure_settings(placeholders))
    for name in ("HEP2_SIGNING_KEY", "HEP2_WEBHOOK_TOKEN", "HEP2_S3_SECRET_ACCESS_KEY", "HEP2_S3_ACCESS_KEY_ID"):
        assert name in problems
    good = Settings(_env_file=None, **prod, signing_key="a" * 64, webhook_token="b" * 32,
                    s3_access_key_id="hep2-app", s3_secret_access_key="c" * 40)
    assert insecure_settings(good) == []


def test_api_and_worker_refuse_to_start_with_the_embedded_signing_key(api_env: dict[str, str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17.4: the API ran against PostgreSQL with ``embedded-mode-not-secret``."""
    env = {**os.environ, **api_env, "HEP2_SIGNING_KEY": "embedded-mode-not-secret"}
    for command in (["api", "--port", str(free_port())], ["worker", "-Q", "cpu"], ["beat"]):
        result = subprocess.run([sys.executable, "-m", "cli.main", *command], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode != 0, command
        assert "HEP2_SIGNING_KEY" in result.stderr and "refusing to start" in result.stderr, result.stderr[-2000:]
    monkeypatch.setenv("HEP2_SIGNING_KEY", "change-me-signing-key")
    get_settings.cache_clear()
    with pytest.raises(InsecureSettingsError), TestClient(create_app()):  # uvicorn api.app:app directly
        pass
    monkeypatch.undo()
    get_settings.cache_clear()


# ------------------------------------------------------------------------------------- the last admin key


def test_the_last_active_admin_key_cannot_be_revoked(empty_postgres_url: str, api_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    """Issue 17.10, in the service layer: the API answers 409 and the CLI exits 1; another admin first.
    A database of its own (the session's has several admin keys), served by a real ``hep2 api``."""
    url = empty_postgres_url
    migrate.upgrade(url)
    env = {**api_env, "HEP2_DATABASE_URL": url}
    with session_scope(url) as session:
        only, plain = create_key(session, "only-admin", Role.ADMIN, actor="test")
        only_id = only.id
    with api_server(env, tmp_path / "api.log") as (host, port, _):
        request = urllib.request.Request(f"http://{host}:{port}/v1/api-keys/{only_id}/revoke", method="POST",
                                         headers=auth(plain))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 409 and "last active admin" in refused.value.read().decode()
    cli = subprocess.run([sys.executable, "-m", "cli.main", "apikey", "revoke", str(only_id)], cwd=REPO_ROOT,
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1 and "last active admin" in cli.stderr, cli.stderr
    with session_scope(url) as session:
        second, _ = create_key(session, "second-admin", Role.ADMIN, actor="test")
        revoke_key(session, only_id, actor="test")  # allowed now
        with pytest.raises(ConflictError):
            revoke_key(session, second.id, actor="test")
        active = session.scalars(select(ApiKey.id).where(ApiKey.revoked_at.is_(None))).all()
        assert list(active) == [second.id]
