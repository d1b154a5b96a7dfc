"""Compare two ``agh_calls.py`` outputs: calls, review reasons, cell counts, cell patterns, max |Δp|."""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEYS = ("pattern", "intensity", "icap", "needs_review", "nuclei")


def main(before: str, after: str) -> None:
    a, b = json.loads(Path(before).read_text()), json.loads(Path(after).read_text())
    calls = [f for f in a if any(a[f][k] != b[f][k] for k in KEYS)]
    reasons = [f for f in a if a[f]["reasons"] != b[f]["reasons"]]
    same_counts = all(len(a[f]["cells"]) == len(b[f]["cells"]) for f in a)
    flips, max_dp = 0, 0.0
    for f in a:
        for ca, cb in zip(a[f]["cells"], b[f]["cells"], strict=False):
            flips += ca[1] != cb[1]
            if ca[2] and cb[2]:
                max_dp = max(max_dp, *(abs(x - y) for x, y in zip(ca[2], cb[2], strict=True)))
    print(f"fields {len(a)}: calls differ on {calls}; reasons differ on {reasons}; "
          f"cells {sum(len(a[f]['cells']) for f in a)}, same count per field: {same_counts}; "
          f"cell pattern flips {flips}; max |dp| {max_dp:.2e}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
