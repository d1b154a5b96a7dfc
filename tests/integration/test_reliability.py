"""Nothing is lost: a worker killed mid-task, and a broker restarted mid-batch.

These tests run their own ``redis-server`` (a real one, on a free port) so that they can kill and restart
it without disturbing the machine's Redis, and their own worker processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from db.models import AnalysisAttempt, SlideImage
from db.session import session_scope
from hep2.settings import get_settings
from hep2.storage import storage_from_settings
from hep2.synthetic import synthetic_png
from hep2.vocabulary import Pattern
from services.keys import create_key
from tests.conftest import free_port
from tests.integration import uploads as up
from workers.celery_app import create_celery_app
from workers.process import worker_process

pytestmark = pytest.mark.integration


class RedisServer:
    """A private, non-persistent redis-server that a test may kill and start again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir, self.proc = free_port(), workdir, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def private_broker(service_env: dict[str, str], tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RedisServer, dict[str, str]]]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found")
    server = RedisServer(tmp_path)
    server.start()
    env = {**service_env, "HEP2_BROKER_URL": server.url, "HEP2_RESULT_BACKEND": server.url,
           "HEP2_REQUEUE_AFTER_S": "3", "HEP2_TASK_SOFT_TIME_LIMIT_S": "20", "HEP2_TASK_TIME_LIMIT_S": "25",
           "HEP2_VISIBILITY_TIMEOUT_S": "10"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield server, env
    server.kill()
    monkeypatch.undo()
    get_settings.cache_clear()


def pool_children(worker_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(worker_pid)], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def wait_for_status(key: str, status: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while up.statuses([key]).get(key) != status:
        assert time.monotonic() < deadline, f"{key} never reached {status}: {up.statuses([key])}"
        time.sleep(0.05)


def test_worker_killed_mid_task_is_redelivered_without_duplicates(private_broker, tmp_path: Path) -> None:
    _, env = private_broker
    storage, app = storage_from_settings(), create_celery_app()
    key = "inbox/kill9/big-field.png"  # full size, so that the analysis runs long enough to be interrupted
    up.upload(storage, [(key, synthetic_png(Pattern.SPECKLED, seed=9, size=(966, 1296), cells=60))])
    node = f"kill9-{os.getpid()}@{socket.gethostname()}"
    with worker_process(app, env, node, tmp_path / "worker.log") as worker:
        app.send_task("hep2.register_upload", args=[key])
        wait_for_status(key, "running")
        children = pool_children(worker.pid)
        assert children, "the worker has no pool process"
        for pid in children:
            os.kill(pid, signal.SIGKILL)  # the process executing the task dies mid-analysis
        final = up.wait_final([key], timeout_s=180)

    assert final[key] in {"done", "needs_review"}
    counts = up.counts([key])
    assert counts["slides"] == 1 and counts["results"] == 1
    with session_scope() as session:
        attempts = session.scalars(select(AnalysisAttempt).join(SlideImage).where(SlideImage.key == key)
                                   .order_by(AnalysisAttempt.number)).all()
    assert [a.outcome.value for a in attempts][-1] == "succeeded" and len(attempts) >= 2
    assert "abandoned" in (attempts[0].error or "")
    assert len({a.task_id for a in attempts}) == 1  # the same message, redelivered


def test_broker_restart_mid_batch_loses_nothing(private_broker, tmp_path: Path) -> None:
    """Uploads are registered and queued for analysis, then the broker dies with every queued message."""
    server, env = private_broker
    storage, app = storage_from_settings(), create_celery_app()
    keys = [f"inbox/redis-restart/field-{i}.png" for i in range(24)]
    up.upload(storage, ((key, up.small_field(i)) for i, key in enumerate(keys)))
    ingest_node = f"ingest-{os.getpid()}@{socket.gethostname()}"
    with worker_process(app, env, ingest_node, tmp_path / "ingest.log", queues="cpu"):  # registration only
        for key in keys[:16]:
            app.send_task("hep2.register_upload", args=[key])
        deadline = time.monotonic() + 60
        while list(up.statuses(keys[:16]).values()) != ["queued"] * 16:
            assert time.monotonic() < deadline, up.statuses(keys)
            time.sleep(0.1)
        for key in keys[16:]:
            app.send_task("hep2.register_upload", args=[key])  # some of these die with the broker
        server.kill()  # this Redis keeps nothing on disk: the queued analyses and registrations are gone
    lost = {k: s for k, s in up.statuses(keys).items() if s not in up.FINAL}
    server.start()

    node = f"restart-{os.getpid()}@{socket.gethostname()}"
    with worker_process(create_celery_app(), env, node, tmp_path / "worker.log"):  # fresh connections
        # beat's jobs, run by hand: the sweep registers what was never registered, the re-queue re-sends
        # what was queued or running when the messages vanished
        deadline = time.monotonic() + 240
        while set(up.statuses(keys).values()) - up.FINAL or len(up.statuses(keys)) < len(keys):
            assert time.monotonic() < deadline, up.statuses(keys)
            create_celery_app().send_task("hep2.sweep_inbox")
            create_celery_app().send_task("hep2.requeue_stale")
            time.sleep(4)

    final = up.statuses(keys)
    assert set(final.values()) <= {"done", "needs_review"}, final
    counts = up.counts(keys)
    assert counts["slides"] == 24 and counts["results"] == 24, counts
    assert len(lost) >= 16  # queued when the broker died, none analysed


def test_a_slide_that_kills_its_worker_every_time_is_failed_after_max_deaths(private_broker, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17.6: every attempt's pool process is killed (as an input that crashes the worker would do);
    after HEP2_MAX_WORKER_DEATHS the slide is failed with "worker died N times", visible in GET /v1/jobs,
    and the message is not redelivered again."""
    _, env = private_broker
    env = {**env, "HEP2_MAX_WORKER_DEATHS": "2"}
    monkeypatch.setenv("HEP2_MAX_WORKER_DEATHS", "2")
    get_settings.cache_clear()
    storage, app = storage_from_settings(), create_celery_app()
    key = "inbox/kill-always/big-field.png"
    up.upload(storage, [(key, synthetic_png(Pattern.SPECKLED, seed=11, size=(966, 1296), cells=60))])
    node = f"killall-{os.getpid()}@{socket.gethostname()}"
    killed: set[int] = set()
    with worker_process(app, env, node, tmp_path / "worker.log") as worker:
        app.send_task("hep2.register_upload", args=[key])
        deadline = time.monotonic() + 240
        while up.statuses([key]).get(key) not in up.FINAL:
            assert time.monotonic() < deadline, up.statuses([key])
            with session_scope() as session:
                running = session.scalar(select(AnalysisAttempt.number).join(SlideImage).where(
                    SlideImage.key == key, AnalysisAttempt.outcome == "running"))
            if running is not None and running not in killed:
                for pid in pool_children(worker.pid):
                    os.kill(pid, signal.SIGKILL)  # the process running this attempt dies, every time
                killed.add(running)
            time.sleep(0.05)
        time.sleep(2)  # a further redelivery, if any, would start attempt 3 now

    with session_scope() as session:
        slide = session.scalar(select(SlideImage).where(SlideImage.key == key))
        attempts = session.scalars(select(AnalysisAttempt).where(AnalysisAttempt.slide_image_id == slide.id)).all()
        slide_id, status, reason = slide.id, slide.status.value, slide.status_reason
    assert status == "failed" and "worker died 2 times" in reason, (status, reason)
    assert len(attempts) == 2 and all("abandoned" in (a.error or "") for a in attempts)

    with session_scope() as session:
        _, viewer = create_key(session, "deaths-viewer", "viewer", actor="test")
    with TestClient(create_app()) as client:
        listed = client.get("/v1/jobs", headers={"Authorization": f"Bearer {viewer}"}).json()
    assert any(j["slide_id"] == slide_id and "worker died 2 times" in j["reason"] for j in listed)
