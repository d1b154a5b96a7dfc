"""Whole-field evaluation (``hep2 evaluate fields``) and the I3A calibration of the cytoplasm and
fibrillar-texture review rules (``hep2 evaluate cytoplasm``); docs/pipeline.md has the protocol."""

from __future__ import annotations

import csv
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from analysis.analyze import Models, analyze_field
from analysis.config import PipelineConfig
from analysis.device import hardware
from analysis.fibrillar import fibrillar_index
from analysis.overlay_files import write_overlay
from analysis.specimen import calibrate_nuclear_max, crop_cytoplasm_ratio, group_medians
from analysis.types import InvalidImageError
from hep2.vocabulary import CELL_PATTERNS, NEGATIVE, parse_pattern
from training.datasets import load_manifest

CODE_PATTERNS = {"HOM": "homogeneous", "ZIA": "speckled", "NUC": "nucleolar", "ACA": "centromere"}
"""AGH codes inside the classifier's vocabulary → expected specimen pattern."""
OOV_CODES = frozenset({"AMA", "DOT", "FIB"})


def expected_call(code: str, pattern: str, ana_positive: int) -> tuple[str, str | None]:
    """(kind, expected pattern): kind is "negative", "in_vocab" or "oov"."""
    if not ana_positive or code == "NEG":
        return "negative", NEGATIVE
    if code in CODE_PATTERNS:
        return "in_vocab", CODE_PATTERNS[code]
    if code in OOV_CODES:
        return "oov", None
    try:
        return "in_vocab", parse_pattern(pattern).value
    except ValueError:
        return "oov", None


def evaluate_fields(data: Path, models: Models, config: PipelineConfig | None = None, overlay_dir: Path | None = None,
                    accept_16bit: bool = False) -> dict[str, Any]:
    """Run the pipeline on every image of ``data/labels.csv`` and score it (see docs/pipeline.md)."""
    rows = list(csv.DictReader((data / "labels.csv").open()))
    per_image, started = [], time.perf_counter()
    for row in rows:
        kind, want = expected_call(row["code"], row.get("pattern", ""), int(row["ana_positive"]))
        entry: dict[str, Any] = {"image": row["image"], "code": row["code"], "kind": kind, "expected": want}
        image = (data / row["image"]).read_bytes()
        try:
            result = analyze_field(image, models, config=config, title=row["image"], accept_16bit=accept_16bit)
        except InvalidImageError as exc:
            entry.update(error=str(exc))
            per_image.append(entry)
            continue
        if overlay_dir:
            write_overlay(overlay_dir / Path(row["image"]).with_suffix(".overlay.png").name, image, result,
                          accept_16bit)
        s, i = result.specimen, result.intensity
        entry.update(intensity_index=i.index, intensity_class=i.intensity_class, pattern=s.pattern,
                     best_known_pattern=s.best_known_pattern, confidence=s.confidence,
                     second_pattern=s.second_pattern, needs_review=s.needs_review, reasons=s.reasons,
                     cells=s.cells_used, mitotic=sum(c.mitotic for c in result.cells),
                     mean_cell_confidence=s.mean_cell_confidence, mean_entropy=s.mean_entropy,
                     cytoplasm_ratio=s.cytoplasm_ratio, fibrillar_index=s.fibrillar_index,
                     nuclei=result.quality.nuclei if result.quality else None, timings_ms=result.timings_ms)
        per_image.append(entry)
    return {"data": str(data), "n_images": len(rows), **score(per_image),
            "seconds": round(time.perf_counter() - started, 1), "model_versions": models.versions(),
            "hardware": hardware(), "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "command": " ".join(["hep2", *sys.argv[1:]]), "images": per_image}


def _share(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def score(per_image: list[dict[str, Any]]) -> dict[str, Any]:
    """Pos/neg accuracy, in-vocabulary pattern accuracy and out-of-vocabulary review share."""
    ok = [e for e in per_image if "error" not in e]
    called_pos = [e for e in ok if e["intensity_class"] != NEGATIVE]
    truly_pos = [e for e in ok if e["kind"] != "negative"]
    inv = [e for e in ok if e["kind"] == "in_vocab"]
    oov = [e for e in ok if e["kind"] == "oov"]
    return {
        "errors": [e["image"] for e in per_image if "error" in e],
        "posneg": {"n": len(ok), "accuracy": _share(sum((e in called_pos) == (e in truly_pos) for e in ok), len(ok)),
                   "positives_called_negative": sum(e not in called_pos for e in truly_pos),
                   "negatives_called_positive": sum(e in called_pos for e in ok if e["kind"] == "negative")},
        "in_vocab_pattern": {"n": len(inv), "accuracy": _share(sum(e["pattern"] == e["expected"] for e in inv),
                                                              len(inv)),
                             "sent_to_review": sum(bool(e["needs_review"]) for e in inv),
                             "best_known_accuracy": _share(sum(e["best_known_pattern"] == e["expected"]
                                                               for e in inv), len(inv))},
        "out_of_vocab": {"n": len(oov), "flagged_for_review": _share(sum(bool(e["needs_review"]) for e in oov),
                                                                     len(oov)),
                         "called_other": _share(sum(e["pattern"] == "other" for e in oov), len(oov)),
                         "confident_known_class": sum(not e["needs_review"] and e["pattern"] not in
                                                      ("other", NEGATIVE) for e in oov)},
    }


RULES = ("oov_cytoplasm_ratio", "review_fibrillar_index")


def cytoplasm_calibration(data: Path) -> dict[str, Any]:
    """Per cell crop its cytoplasm ratio and fibrillar index; per rule the per-pattern group ranges and the
    threshold (:func:`~analysis.specimen.calibrate_nuclear_max`)."""
    table = load_manifest(data)
    values = {rule: np.full(len(table), np.nan) for rule in RULES}
    for i in range(len(table)):
        image, mask = table.read_crop(i)
        if mask is not None:
            for rule, measure in zip(RULES, (crop_cytoplasm_ratio, fibrillar_index), strict=True):
                value = measure(image, mask)
                values[rule][i] = np.nan if value is None else value
    patterns = np.array([CELL_PATTERNS[k].value for k in table.labels])
    result: dict[str, Any] = {
        "data": str(data), "rule": "highest specimen-group median over nuclear (non-Golgi) groups, rounded up to 0.05"}
    for rule, v in values.items():
        by_pattern: dict[str, list[float]] = {}
        for (name, _), median in group_medians(v, table.groups, patterns).items():
            by_pattern.setdefault(name, []).append(median)
        result[rule] = {"cells_measured": int((~np.isnan(v)).sum()),
                        "threshold": calibrate_nuclear_max(v, table.groups, patterns),
                        "per_pattern": {name: {"groups": len(m), "min": round(min(m), 3), "max": round(max(m), 3)}
                                        for name, m in by_pattern.items()}}
    return result
