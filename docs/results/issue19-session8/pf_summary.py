"""Summary of the per-field rounds in per-field/: per version the round sums and stage medians, and the
old/new ratios per round (old = 8641889; start = e888416, main at the start of session 8)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

rows: dict[str, dict[int, dict]] = {}
for path in sorted((Path(__file__).parent / "per-field").glob("*_r*.json")):
    version, round_ = re.fullmatch(r"(\w+)_r(\d+)\.json", path.name).groups()
    rows.setdefault(version, {})[int(round_)] = json.loads(path.read_text())["summary"]
for version, rounds in rows.items():
    sums = {r: round(s["median_sum_ms"]) for r, s in sorted(rounds.items())}
    stages: dict[str, list[float]] = {}
    for summary in rounds.values():
        for stage, ms in summary["stages"].items():
            stages.setdefault(stage, []).append(ms)
    print(version, sums, {k: round(statistics.median(v), 1) for k, v in stages.items()})
old = {r: s["median_sum_ms"] for r, s in rows["old"].items()}
for version, rounds in rows.items():
    if version != "old":
        ratios = {r: round(old[r] / s["median_sum_ms"], 2) for r, s in sorted(rounds.items()) if r in old}
        print(f"old/{version}", ratios, "median", round(statistics.median(ratios.values()), 2))
