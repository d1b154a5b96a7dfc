"""The bench's CPU accounting: real processes burning real CPU, read back from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers import cpu_usage

pytestmark = pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux's /proc")

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass\n{then}"


def test_a_process_tree_counts_its_live_and_its_finished_children() -> None:
    """A grandchild that burns 0.3 s counts while it runs (live descendant) and after it ends (reaped:
    cutime of its parent), never in the root alone."""
    grandchild = BURN.format(seconds=0.3, then="import sys; sys.stdout.write('done\\n'); sys.stdout.flush()"
                             "\nimport time; time.sleep(30)")
    child = (f"import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', {grandchild!r}], "
             "stdout=subprocess.PIPE, text=True)\nprint(p.stdout.readline(), flush=True)\np.kill(); p.wait()\n"
             "print('reaped', flush=True)\nimport time; time.sleep(30)")
    before = cpu_usage.tree_cpu_s(os.getpid())
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "done"  # the grandchild has burnt its CPU and still lives
        time.sleep(0.05)
        live = cpu_usage.tree_cpu_s(proc.pid)
        assert proc.stdout.readline().strip() == ""
        assert proc.stdout.readline().strip() == "reaped"
        finished = cpu_usage.tree_cpu_s(proc.pid)
        mine = cpu_usage.tree_cpu_s(os.getpid()) - before
        alone = cpu_usage.process_cpu_s(proc.pid, reaped_children=False)
    finally:
        proc.kill()
        proc.wait()
    assert live >= 0.28 and finished >= 0.28
    assert mine >= 0.28  # the test process's tree holds the child's tree
    assert alone < 0.25  # the child itself only started a process and waited


def test_per_field_accounting_splits_the_host_into_roles_the_rest_and_idle() -> None:
    before = cpu_usage.CpuSnapshot({"worker": 10.0, "uploader": 1.0}, host_busy=100.0, host_total=400.0)
    after = cpu_usage.CpuSnapshot({"worker": 14.0, "uploader": 1.5}, host_busy=106.0, host_total=410.0)
    per_field = cpu_usage.ms_per_item(before, after, items=10)
    assert per_field == {"worker": 400.0, "uploader": 50.0, "rest of host": 150.0, "idle": 400.0}
    assert cpu_usage.ms_per_item(None, after, 10) is None


def test_a_snapshot_of_this_process_grows_with_the_work_it_does() -> None:
    pid = os.getpid()
    first = cpu_usage.snapshot({}, {"me": pid})
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    second = cpu_usage.snapshot({}, {"me": pid})
    assert first is not None and second is not None
    assert second.roles["me"] - first.roles["me"] >= 0.15
    assert second.host_busy - first.host_busy >= 0.15 and second.host_total > second.host_busy
