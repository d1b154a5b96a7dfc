"""Old vs new CPU time per field of the texture member and the quality gate, in one process, alternating.

    PYTHONPATH=<new tree> python bench_stages.py OLD_TREE OUT.json [rounds]

OLD_TREE: a checkout of the old code (e.g. ``git archive e888416 analysis | tar -x -C /tmp/old``); its
``analysis/descriptors.py``, ``quality.py`` and ``stats.py`` are loaded beside the new ones. Fields: the first
8 AGH fields; texture input: the crops the pipeline gives the texture member there (captured once with the new
tree's ``analyze_field``); ``texture`` = descriptors + LightGBM (the member), ``descriptors`` = ``extract``
alone. One thread (torch, OpenCV); ``time.process_time`` per stage call; per round, old and
new alternate field by field (order swapped every round). The JSON holds per-field ms and the ratios new/old.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType

os.environ.setdefault("OMP_NUM_THREADS", "1")
import cv2
import torch

FIELDS = Path(os.environ.get("HEP2_SHARED_DATA", "/work/shared/data")) / "agh-fields"


def _load(name: str, path: Path, **patch: ModuleType) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    for k, v in patch.items():
        setattr(mod, k, v)
    return mod


def _texture_crops(fields: list[Path]) -> list[list]:
    from analysis.analyze import Models, analyze_field
    from analysis.models import fused

    got: list[list] = []
    orig = fused.TextureMember.predict

    def spy(self: object, crops: list) -> object:
        got.append(list(crops))
        return orig(self, crops)

    fused.TextureMember.predict = spy
    models = Models()
    for path in fields:
        analyze_field(path.read_bytes(), models)
    fused.TextureMember.predict = orig
    return got


def main(old_tree: str, out: str, rounds: int = 3) -> None:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from analysis import descriptors, quality
    from analysis.decode import decode_upload
    from analysis.models.fused import DEFAULT_FUSED_MODEL, FusedCellClassifier, TextureMember

    old = Path(old_tree) / "analysis"
    old_stats = _load("old_stats", old / "stats.py")
    old_desc = _load("old_descriptors", old / "descriptors.py", stats=old_stats)
    old_quality = _load("old_quality", old / "quality.py", stats=old_stats)
    fields = sorted(FIELDS.glob("*.png"))[:8]
    crops = _texture_crops(fields)
    texture = next(m for m in FusedCellClassifier(DEFAULT_FUSED_MODEL).members if isinstance(m, TextureMember)).model
    images = [decode_upload(p.read_bytes(), False) for p in fields]

    def tex(mod: ModuleType, c: list) -> None:
        texture.predict_features(mod.extract(c, texture.spec))

    def desc(mod: ModuleType, c: list) -> None:
        mod.extract(c, texture.spec)

    def qual(mod: ModuleType, image: object) -> None:
        fresh = dataclasses.replace(image)  # type: ignore[type-var]  # no cached filled / grey_levels
        report = mod.assess_field(fresh)
        report.nuclei = mod.count_nuclei(fresh)

    stages = {"texture": (tex, crops), "descriptors": (desc, crops), "quality": (qual, images)}
    variants = {"old": {"texture": old_desc, "descriptors": old_desc, "quality": old_quality},
                "new": {"texture": descriptors, "descriptors": descriptors, "quality": quality}}
    ms: dict[str, dict[str, list[list[float]]]] = {s: {"old": [], "new": []} for s in stages}
    for stage, (fn, inputs) in stages.items():
        for v in variants:
            fn(variants[v][stage], inputs[0])  # warm-up
        for r in range(rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            per = {v: [] for v in order}
            for item in inputs:
                for v in order:
                    t0 = time.process_time()
                    fn(variants[v][stage], item)
                    per[v].append((time.process_time() - t0) * 1000)
            for v in order:
                ms[stage][v].append(per[v])
    summary = {}
    for stage in stages:
        rows = [(sum(o) / len(o), sum(n) / len(n)) for o, n in zip(ms[stage]["old"], ms[stage]["new"], strict=True)]
        summary[stage] = {"old_ms_per_field": [round(o, 2) for o, _ in rows],
                          "new_ms_per_field": [round(n, 2) for _, n in rows],
                          "ratio_new_over_old": [round(n / o, 3) for o, n in rows],
                          "median_ratio": round(statistics.median(n / o for o, n in rows), 3)}
    doc = {"protocol": __doc__, "fields": [p.name for p in fields], "cells": [len(c) for c in crops],
           "ms": ms, "summary": summary, "load": os.getloadavg(),
           "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 3)
