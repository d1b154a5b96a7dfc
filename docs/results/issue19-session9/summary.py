"""Table of rounds.sh's results: python summary.py ROUNDS_DIR (old-N/, new-N/, pinned-N/, p1-N/)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(name: str, report: dict) -> str:
    if "end_to_end" in report:  # hep2 bench
        alone, through = report["models_alone"], report["end_to_end"]
        cpu = through.get("cpu_ms_per_field") or {}
        alone_cpu = (alone.get("cpu_ms_per_field") or {}).get("models", "")
        return (f"| {name} | {report.get('processes', 1)} | {alone['fields_per_s']} | {through['fields_per_s']} | "
                f"{report['ratio']} | {report.get('analysing_cpu_ratio', '')} | {alone_cpu} | "
                + " | ".join(str(cpu.get(k, "")) for k in ROLES) + " |")
    cpu = report["cpu_ms_per_field"]  # e2e_cpu.py (pinned)
    return (f"| {name} | 1, pinned | {report['models_alone_fields_per_s']} | {report['fields_per_s']} | "
            f"{report['ratio']} | | | {cpu.get('analysing worker', '')} | {cpu.get('service worker', '')} | "
            f"{cpu.get('bench (uploads, polling)', '')} | | |")


ROLES = ("analysing worker", "service worker", "this process (uploads, polling)", "rest of host", "idle")

if __name__ == "__main__":
    root = Path(sys.argv[1])
    print("| run | processes | models alone, fields/s | end to end, fields/s | ratio | analysing CPU ratio | "
          "models alone CPU ms/field | analysing worker | service worker | uploads, polling | rest of host | idle |")
    print("|---" * 12 + "|")
    for folder in sorted(root.iterdir(), key=lambda p: (p.name.split("-")[1], p.name)):
        for file in ("bench.json", "e2e.json"):
            if (folder / file).is_file():
                print(row(folder.name, json.loads((folder / file).read_text())))
