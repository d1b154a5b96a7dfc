"""Starting and stopping a real ``hep2 worker`` subprocess (used by the demo and the test harness)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

THREADS_ENV = "HEP2_WORKER_THREADS"
"""Torch threads per worker process, set by ``hep2 worker`` for its pool processes."""


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), else the host's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on this platform
        return max(1, os.cpu_count() or 1)


def default_processes(cuda: bool) -> int:
    """Worker processes per host: 1 with a CUDA GPU (one process owns it), else one per usable core, each
    single-threaded (on a 2-core CPU two 1-thread processes give more fields/s than one 2-thread process:
    most stages are single-threaded numpy/scipy; docs/performance.md)."""
    return 1 if cuda else usable_cores()


def threads_per_process(processes: int) -> int:
    """Torch threads per process so that ``processes`` processes use every usable core once."""
    return max(1, usable_cores() // max(1, processes))


class WorkerStartError(RuntimeError):
    """The worker process exited or did not answer a ping in time."""


@contextmanager
def worker_process(app: Celery, env: Mapping[str, str], node: str, log_path: Path,
                   queues: str = "gpu,cpu,training,lis", start_timeout_s: float = 90.0, concurrency: int = 1,
                   ) -> Iterator[subprocess.Popen]:
    """Run ``hep2 worker`` (``concurrency`` processes) in its own process group until the block exits; wait
    until it answers pings."""
    cmd = [sys.executable, "-m", "cli.main", "worker", "-Q", queues, "-c", str(concurrency), "-n", node]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _answers_ping(app, node):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise WorkerStartError(f"worker {node} did not start; log:\n{log_path.read_text()[-4000:]}")
        yield proc
    finally:
        stop_process_group(proc)


def _answers_ping(app: Celery, node: str) -> bool:
    try:
        return bool(app.control.ping(destination=[node], timeout=1.0))
    except Exception:  # the broker is (re)starting (each transport raises its own errors): ask again
        time.sleep(0.5)
        return False


def stop_process_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM (Celery's warm shutdown), then SIGKILL if it takes longer than ``grace_s``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
