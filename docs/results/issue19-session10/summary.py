"""Markdown rows of session 10's runs: rounds/ (e2e_cpu.sh, four set-ups), pinned/ (pinned, 1 or 2 processes),
pinned-bracketed/ (pinned, 1 process, models alone before and after) and bench/ (hep2 bench --rounds 3)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

here = Path(__file__).resolve().parent


def e2e_cpu_rows(folder: str) -> None:
    ratios: dict[str, list[float]] = {}
    for path in sorted((here / folder).glob("*.json"), key=lambda p: p.stat().st_mtime):
        d = json.loads(path.read_text())
        cpu = d["cpu_ms_per_field"]
        setup = path.stem.rsplit("-", 1)[0]
        ratio = d.get("ratio_bracketed") or d["ratio"]
        ratios.setdefault(setup, []).append(ratio)
        after = d.get("models_alone_after_fields_per_s")
        print(f"| {folder}/{path.stem} | {d['models_alone_fields_per_s']}"
              f"{f' / {after}' if after else ''} | {d['fields_per_s']} | {d['ratio']} | "
              f"{d.get('ratio_bracketed', '')} | {cpu['analysing worker']} | {cpu['service worker']} | "
              f"{cpu['moto (S3)']} | {cpu['postgresql']} | {cpu['bench (uploads, polling)']} |")
    for setup, values in ratios.items():
        print(f"{folder} {setup}: n={len(values)} median {statistics.median(values):.3f} "
              f"range {min(values):.3f}-{max(values):.3f}", file=sys.stderr)


def bench_rows(path: Path) -> None:
    d = json.loads(path.read_text())
    for n, row in enumerate(d["rounds"], 1):
        print(f"| {path.stem} round {n} | {row['models_alone_before_fields_per_s']} / "
              f"{row['models_alone_after_fields_per_s']} | {row['end_to_end_fields_per_s']} | {row['ratio']} | "
              f"{row['analysing_cpu_ratio']} |")
    alone, e2e = d["models_alone"], d["end_to_end"]
    cpu, alone_cpu = e2e["cpu_ms_per_field"], alone["cpu_ms_per_field"]
    middle = next(r for r in d["rounds"] if r["ratio"] == d["ratio"])
    capacity = 2000.0 * d["processes"] / 2 / ((middle["models_alone_before_fields_per_s"]
                                               + middle["models_alone_after_fields_per_s"]) / 2)
    others = sum(v for k, v in cpu.items() if k not in ("analysing worker", "idle"))
    bound = capacity / (capacity - alone_cpu.get("rest of host", 0.0) + others)
    print(f"median round: CPU ms per field {cpu}; models alone {alone_cpu}; stage sum per field alone "
          f"{alone['stage_ms']['total']['mean']} / end to end {e2e['stage_ms']['total']['mean']}; models share "
          f"alone {alone['models_share_of_process_time']} / end to end {e2e['models_share_of_process_time']}; "
          f"bound with a worker costing only the models and no idle: {capacity:.1f} / "
          f"({capacity:.1f} - {alone_cpu.get('rest of host', 0.0)} + {others:.1f}) = {bound:.3f}", file=sys.stderr)


if __name__ == "__main__":
    for folder in ("rounds", "pinned", "pinned-bracketed"):
        e2e_cpu_rows(folder)
    for path in sorted((here / "bench").glob("*.json")):
        bench_rows(path)
