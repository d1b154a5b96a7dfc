"""CPU seconds of every process on the host during ``hep2 bench``'s timed end-to-end window, per field.

Runs :func:`workers.bench.end_to_end` (environment from e2e_cpu.sh) and reads /proc before and after the
timed window (between the warm-up's and the run's ``wait_for_final``): moto, PostgreSQL, Redis, the
analysing worker, the service worker and this (uploading, polling) process.
Before and after that, the models-alone run of ``hep2 bench`` on the same fields (PIN_MODELS_ALONE=0: in
this process, pinned to CPU 0 with one thread, as e2e_cpu_pinned.sh pins the analysing worker);
``ratio`` uses the run before, ``ratio_bracketed`` the mean of both. WORKER_PROCESSES: the analysing
worker's processes, if not PROCESSES.
usage: e2e_cpu.py OUT.json COUNT PROCESSES
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import torch

from workers import bench, cpu_usage

DATA = Path(os.environ.get("HEP2_SHARED_DATA", "/work/shared/data")) / "agh-fields"


def role(pid: int, command: str) -> str:
    if pid == os.getpid():
        return "bench (uploads, polling)"
    if "moto_server" in command:
        return "moto (S3)"
    if command.startswith("postgres"):
        return "postgresql"
    if "redis-server" in command:
        return "redis"
    if "cli.main worker" in command:
        return "service worker" if "-service@" in command else "analysing worker"
    return "other processes"


def cpu_by_process() -> dict[str, tuple[str, float]]:
    """Per process with any CPU time, keyed ``"pid command"``: its role and CPU seconds (user + system with
    reaped children, :func:`workers.cpu_usage.process_cpu_s`)."""
    seen = {}
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        seconds = cpu_usage.process_cpu_s(pid)  # 0.0: no time yet, or gone since (nothing to count either way)
        if seconds:
            seen[f"{pid} {command[:90]}"] = (role(pid, command), seconds)
    return seen


def cpu_by_role(processes: dict[str, tuple[str, float]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for name, seconds in processes.values():
        totals[name] = totals.get(name, 0.0) + seconds
    totals["host (all processes)"] = cpu_usage.host_cpu_s()[1]  # all cores' time, idle included
    return totals


def main(out: Path, count: int, processes: int) -> None:
    snapshots: list[dict[str, float]] = []  # after the warm-up's wait (window starts), after the run's
    wait = bench.wait_for_final

    processes_seen: list[dict[str, tuple[str, float]]] = []

    def snapshot_after_wait(*args, **kwargs):
        result = wait(*args, **kwargs)
        processes_seen.append(cpu_by_process())
        snapshots.append(cpu_by_role(processes_seen[-1]))
        return result

    bench.wait_for_final = snapshot_after_wait
    bench._prepare_state()
    fields = bench.bench_fields(count, (0, 0), DATA)
    pin = os.environ.get("PIN_MODELS_ALONE")
    affinity = os.sched_getaffinity(0)
    if pin is not None:
        os.sched_setaffinity(0, {int(pin)})
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
    models = bench.worker_models()
    alone = bench.models_alone(fields, models, processes)
    os.sched_setaffinity(0, affinity)
    report = bench.end_to_end(fields, out.parent, processes=int(os.environ.get("WORKER_PROCESSES", processes)))
    if pin is not None:  # session 10: models alone again after the end-to-end run (drift brackets)
        os.sched_setaffinity(0, {int(pin)})
    alone_after = bench.models_alone(fields, models, processes)
    os.sched_setaffinity(0, affinity)
    first, after = snapshots
    per_field = {k: round(1000 * (after.get(k, 0.0) - first.get(k, 0.0)) / count, 1) for k in after}
    report["models_alone_fields_per_s"] = alone["fields_per_s"]
    report["models_alone_mean_stage_ms"] = alone["mean_stage_ms"]
    report["ratio"] = round(report["fields_per_s"] / alone["fields_per_s"], 3)
    report["models_alone_after_fields_per_s"] = alone_after["fields_per_s"]
    alone_mean = (alone["fields_per_s"] + alone_after["fields_per_s"]) / 2
    report["ratio_bracketed"] = round(report["fields_per_s"] / alone_mean, 3)
    report["cpu_ms_per_field"] = per_field
    deltas = {k: v - processes_seen[0].get(k, ("", 0.0))[1] for k, (_, v) in processes_seen[1].items()}
    report["top_processes_cpu_ms_per_field"] = {
        k: round(1000 * v / count, 1) for k, v in sorted(deltas.items(), key=lambda kv: -kv[1])[:14]}
    report["cpu_ms_per_field_sum_of_roles"] = round(sum(v for k, v in per_field.items() if not k.startswith("host")), 1)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), int(sys.argv[2]), int(sys.argv[3]))
