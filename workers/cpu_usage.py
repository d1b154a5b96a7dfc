"""CPU time of process trees and of the whole host, read from Linux's /proc (for ``hep2 bench``).

Where the CPU of a host goes while it runs the service end to end: the analysing worker, the service worker,
the process that uploads and polls, and everything else (the database, broker and storage when they run
on the same host, the kernel). Elsewhere than Linux the functions return None and the bench leaves the
accounting out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may contain spaces); None if gone."""
    try:
        return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu_s(pid: int, reaped_children: bool = True) -> float:
    """User + system seconds of ``pid``, with those of its children that ended and were waited for."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    ticks = fields[11:15] if reaped_children else fields[11:13]  # utime stime [cutime cstime]
    return sum(map(int, ticks)) / _TICKS_PER_S


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))  # fields[1]: the parent's pid
    return tree


def tree_cpu_s(pid: int, children: Mapping[int, list[int]] | None = None) -> float:
    """CPU seconds of ``pid`` and every live descendant (ended ones count through ``cutime``/``cstime``)."""
    children = _children() if children is None else children
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        total += process_cpu_s(current)
        stack.extend(children.get(current, ()))
    return total


def host_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the host since boot, all cores (/proc/stat; idle and iowait are not busy)."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(
        int, (PROC / "stat").read_text().split("\n", 1)[0].split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy / _TICKS_PER_S, (busy + idle + iowait) / _TICKS_PER_S


@dataclass(frozen=True)
class CpuSnapshot:
    roles: dict[str, float]  # role -> CPU seconds of its process (tree)
    host_busy: float
    host_total: float


def snapshot(trees: Mapping[str, int], single: Mapping[str, int] | None = None) -> CpuSnapshot | None:
    """CPU seconds so far of each role: ``trees`` (role -> root pid, with its descendants) and ``single``
    (role -> pid alone, e.g. a process whose children are other roles); None where there is no /proc."""
    if not (PROC / "stat").is_file():
        return None
    children = _children()
    roles = {role: tree_cpu_s(pid, children) for role, pid in trees.items()}
    roles |= {role: process_cpu_s(pid, reaped_children=False) for role, pid in (single or {}).items()}
    busy, total = host_cpu_s()
    return CpuSnapshot(roles, busy, total)


def ms_per_item(before: CpuSnapshot | None, after: CpuSnapshot | None, items: int) -> dict[str, float] | None:
    """CPU ms per item between two snapshots: each role, ``rest of host`` (busy time of everything else) and
    ``idle`` (unused capacity of all cores)."""
    if before is None or after is None or items <= 0:
        return None
    per = {role: (after.roles[role] - before.roles.get(role, 0.0)) for role in after.roles}
    busy = after.host_busy - before.host_busy
    per["rest of host"] = max(0.0, busy - sum(per.values()))
    per["idle"] = (after.host_total - before.host_total) - busy
    return {role: round(1000.0 * seconds / items, 1) for role, seconds in per.items()}
