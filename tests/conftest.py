"""Test harness: the real services of this machine, isolated per test session.

* PostgreSQL on 127.0.0.1:5432 (trust auth): a fresh database per session, migrated with Alembic, dropped
  at the end.
* Redis on 127.0.0.1:6379: a free DB index of its 16, flushed before and after.
* S3: moto's ``ThreadedMotoServer`` on a free port, spoken to over HTTP by boto3 like MinIO.
* Celery: a real ``hep2 worker`` subprocess on those services.

When a service is unreachable the tests that need it are skipped with the reason, except in CI
(``CI=true``), where that is a failure.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import redis

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request otherwise

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HEP2_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
PG_ADMIN_DSN = os.environ.get("HEP2_TEST_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc}); the integration tests need it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real HEp-2 images); tests that need it skip when it is absent."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (set HEP2_SHARED_DATA); skipping")
    return SHARED_DATA


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty PostgreSQL database, yield its URL, drop it afterwards."""
    name = f"hep2_test_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        params = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
        try:
            yield f"postgresql+psycopg://{params['user']}@{params['host']}:{params['port']}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (not migrated)."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (e.g. migrating it up and down)."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def database_url(postgres_url: str) -> str:
    """The session's PostgreSQL database, migrated to head with Alembic."""
    from db.migrate import upgrade

    upgrade(postgres_url)
    return postgres_url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis DB index nobody else is using, flushed before and after."""
    try:
        probe = redis.Redis(REDIS_HOST, REDIS_PORT, socket_timeout=5)
        probe.ping()
    except redis.RedisError as exc:
        _unavailable("Redis at 127.0.0.1:6379", exc)
    for index in secrets.SystemRandom().sample(range(1, 16), 15):
        client = redis.Redis(REDIS_HOST, REDIS_PORT, db=index)
        # Claim the index atomically so parallel sessions do not share it.
        if client.dbsize() == 0 and client.set("hep2:test:claimed", os.getpid(), nx=True):
            client.flushdb()
            yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{index}"
            client.flushdb()
            return
    pytest.fail("no free Redis DB index (1..15) for the tests")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3 endpoint over HTTP (moto's server), as boto3 would see MinIO."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def service_env(database_url: str, redis_url: str, s3_endpoint: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``HEP2_*`` variables pointing at the session's services; also set in this process."""
    env = {
        "HEP2_STATE_DIR": str(tmp_path_factory.mktemp("state")),
        "HEP2_DATABASE_URL": database_url,
        "HEP2_BROKER_URL": redis_url,
        "HEP2_RESULT_BACKEND": redis_url,
        "HEP2_STORAGE_BACKEND": "s3",
        "HEP2_S3_BUCKET": "hep2-test",
        "HEP2_S3_ENDPOINT_URL": s3_endpoint,
        "HEP2_S3_ACCESS_KEY_ID": "testing",
        "HEP2_S3_SECRET_ACCESS_KEY": "testing",
        "HEP2_SWEEP_INTERVAL_S": "3600",
        # production mode (a database URL): the API and workers refuse the embedded signing key
        "HEP2_SIGNING_KEY": secrets.token_hex(32),
        # the LIS: an MLLP listener that tests/integration/test_reports.py starts on this port when it needs it
        "HEP2_LIS_HOST": "127.0.0.1",
        "HEP2_LIS_PORT": str(free_port()),
        "HEP2_LIS_TIMEOUT_S": "20",
        "HEP2_LIS_RETRY_BASE_S": "0.5",
        "HEP2_LIS_RETRY_MAX_S": "2",
    }
    from hep2.settings import get_settings
    from hep2.storage import S3Storage, storage_from_settings

    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        storage = storage_from_settings()
        assert isinstance(storage, S3Storage)
        storage.ensure_bucket()
        yield env
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def celery_worker(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``hep2 worker`` process on all queues; yields its node name."""
    from workers.celery_app import create_celery_app
    from workers.process import WorkerStartError, worker_process

    node = f"test-{os.getpid()}@{socket.gethostname()}"
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    try:
        with worker_process(create_celery_app(), service_env, node, log):
            yield node
    except WorkerStartError as exc:
        pytest.fail(str(exc))
