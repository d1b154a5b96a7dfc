"""``hep2 analyze`` and ``hep2 evaluate fields`` (mounted by hep2/cli.py through :func:`register`)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from hep2.vocabulary import NEGATIVE, parse_pattern

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


def _hardware() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "python": platform.python_version()}


def evaluate_fields(data: Path, models: Any, config: Any = None, overlay_dir: Path | None = None,
                    accept_16bit: bool = False) -> dict[str, Any]:
    """Run the pipeline on every image of ``data/labels.csv`` and score it (see docs/pipeline.md)."""
    from workers.pipeline.analyze import analyze_field
    from workers.pipeline.types import InvalidImageError

    rows = list(csv.DictReader((data / "labels.csv").open()))
    per_image, started = [], time.perf_counter()
    for row in rows:
        kind, want = expected_call(row["code"], row.get("pattern", ""), int(row["ana_positive"]))
        entry: dict[str, Any] = {"image": row["image"], "code": row["code"], "kind": kind, "expected": want}
        try:
            result = analyze_field((data / row["image"]).read_bytes(), models, config=config, title=row["image"],
                                   accept_16bit=accept_16bit)
        except InvalidImageError as exc:
            entry.update(error=str(exc))
            per_image.append(entry)
            continue
        if overlay_dir:
            overlay_dir.mkdir(parents=True, exist_ok=True)
            (overlay_dir / Path(row["image"]).with_suffix(".overlay.png").name).write_bytes(result.overlay_png)
        s, i = result.specimen, result.intensity
        entry.update(intensity_index=i.index, intensity_class=i.intensity_class, pattern=s.pattern,
                     best_known_pattern=s.best_known_pattern, confidence=s.confidence,
                     second_pattern=s.second_pattern, needs_review=s.needs_review, reasons=s.reasons,
                     cells=s.cells_used, mitotic=sum(c.mitotic for c in result.cells),
                     mean_cell_confidence=s.mean_cell_confidence, mean_entropy=s.mean_entropy,
                     cytoplasm_ratio=s.cytoplasm_ratio, fibrillar_index=s.fibrillar_index,
                     timings_ms=result.timings_ms)
        per_image.append(entry)
    return {"data": str(data), "n_images": len(rows), **score(per_image),
            "seconds": round(time.perf_counter() - started, 1), "model_versions": models.versions(),
            "hardware": _hardware(), "date": datetime.now(UTC).strftime("%Y-%m-%d"),
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


def _models(classifier: Path | None, segmenter: str, device: str, cfg: Any) -> Any:
    """Models for the CLI: ``segmenter`` default | unet | classical; the classical one with ``cfg.segmentation``."""
    from workers.pipeline.analyze import Models
    from workers.pipeline.segmentation import default_segmenter

    kind = "auto" if segmenter == "default" else segmenter
    return Models(segmenter=default_segmenter(device=device, kind=kind, classical=cfg.segmentation),
                  classifier_weights=classifier, device=device)


def register(app: typer.Typer, evaluate_app: typer.Typer) -> None:
    """Add ``analyze`` to ``app`` and ``fields`` to ``evaluate_app``."""

    @app.command("analyze")
    def analyze_cmd(
        files: Annotated[list[Path], typer.Argument(help="Slide-well images (PNG, TIFF, JPEG).")],
        json_out: Annotated[Path | None, typer.Option("--json", help="Write all results as JSON here.")] = None,
        overlay_dir: Annotated[Path | None, typer.Option(help="Write <name>.overlay.png files here.")] = None,
        config: Annotated[Path | None, typer.Option(help="Pipeline config (JSON/TOML); default: "
                                                         "$HEP2_PIPELINE_CONFIG or built-in.")] = None,
        classifier: Annotated[Path | None, typer.Option(help="Cell classifier weights; default: bundled.")] = None,
        segmenter: Annotated[str, typer.Option(help="default | unet | classical")] = "default",
        device: str = "auto",
        cells: Annotated[bool, typer.Option(help="Include per-cell records in the JSON.")] = False,
        accept_16bit: Annotated[bool | None, typer.Option(
            "--accept-16bit/--reject-16bit", help="Analyse or reject 16-bit images; default: "
                                                  "$HEP2_ACCEPT_16BIT (reject).")] = None,
    ) -> None:
        """Analyse slide images with the bundled models; prints a table, bad files with their reason."""
        from hep2.settings import get_settings
        from workers.pipeline.analyze import analyze_field, load_config
        from workers.pipeline.types import InvalidImageError

        cfg, results = load_config(config), {}
        models = _models(classifier, segmenter, device, cfg)
        sixteen = get_settings().accept_16bit if accept_16bit is None else accept_16bit
        header = f"{'file':<28} {'intensity':<22} {'pattern':<17} {'ICAP':<10} {'second':<17} {'cells':>5}  review"
        typer.echo(header)
        for path in files:
            try:
                r = analyze_field(path.read_bytes(), models, config=cfg, title=path.name, accept_16bit=sixteen)
            except (InvalidImageError, OSError) as exc:
                typer.echo(f"{path.name:<28} REJECTED: {exc}")
                results[str(path)] = {"error": str(exc)}
                continue
            s, i = r.specimen, r.intensity
            typer.echo(f"{path.name:<28} {i.intensity_class + f' ({i.index:.1f})':<22} {s.pattern:<17} "
                       f"{s.icap or '-':<10} {s.second_pattern or '-':<17} {s.cells_used:>5}  "
                       f"{'yes: ' + '; '.join(s.reasons) if s.needs_review else 'no'}")
            results[str(path)] = r.to_dict(with_cells=cells)
            if overlay_dir:
                overlay_dir.mkdir(parents=True, exist_ok=True)
                (overlay_dir / f"{path.stem}.overlay.png").write_bytes(r.overlay_png)
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(results, indent=2) + "\n")

    @evaluate_app.command("fields")
    def evaluate_fields_cmd(
        data: Annotated[Path, typer.Option(help="Folder with labels.csv (agh-fields layout) and the images.")],
        json_out: Annotated[Path, typer.Option("--json", help="Where to write the metrics JSON.")],
        overlay_dir: Annotated[Path | None, typer.Option(help="Also write the overlays here.")] = None,
        config: Annotated[Path | None, typer.Option(help="Pipeline config (JSON/TOML).")] = None,
        classifier: Annotated[Path | None, typer.Option(help="Cell classifier weights; default: bundled.")] = None,
        segmenter: Annotated[str, typer.Option(help="default | unet | classical")] = "default",
        device: str = "auto",
    ) -> None:
        """Whole-field evaluation: pos/neg, in-vocabulary pattern accuracy, out-of-vocabulary review share.

        16-bit images are analysed only with ``HEP2_ACCEPT_16BIT=true`` (as in the service).
        """
        from hep2.settings import get_settings
        from workers.pipeline.analyze import load_config

        cfg = load_config(config)
        result = evaluate_fields(data, _models(classifier, segmenter, device, cfg), cfg, overlay_dir,
                                 accept_16bit=get_settings().accept_16bit)
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        pn, iv, ov = result["posneg"], result["in_vocab_pattern"], result["out_of_vocab"]
        typer.echo(f"images {result['n_images']} (errors {len(result['errors'])}), {result['seconds']} s")
        typer.echo(f"  pos/neg accuracy {pn['accuracy']}  positives called negative {pn['positives_called_negative']}"
                   f"  negatives called positive {pn['negatives_called_positive']}")
        typer.echo(f"  in-vocabulary pattern accuracy {iv['accuracy']} (n={iv['n']}, to review {iv['sent_to_review']}, "
                   f"classifier's top known pattern right {iv['best_known_accuracy']})")
        typer.echo(f"  out-of-vocabulary flagged {ov['flagged_for_review']} (n={ov['n']}, called other "
                   f"{ov['called_other']}, confident known class {ov['confident_known_class']})")
        for e in result["images"]:
            typer.echo(f"  {e['image']:<12} " + (f"ERROR {e['error']}" if "error" in e else
                       f"{e['intensity_class']:<12} {e['pattern']:<16} top {e['best_known_pattern'] or '-':<16} "
                       f"conf {e['confidence']:.2f} review {e['needs_review']}"))

    @evaluate_app.command("cytoplasm")
    def calibrate_cytoplasm_cmd(
        data: Annotated[Path, typer.Option(help="Cells with masks and specimen groups (i3a-task1 layout).")],
        json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON.")] = None,
    ) -> None:
        """Calibrate ``oov_cytoplasm_ratio`` and ``review_fibrillar_index`` on nuclear in-vocabulary specimens."""
        result = cytoplasm_calibration(data)
        for rule in RULES:
            typer.echo(f"{rule} = {result[rule]['threshold']}")
            for name, r in result[rule]["per_pattern"].items():
                typer.echo(f"  {name:<18} groups {r['groups']:>3}  group medians {r['min']:.2f} .. {r['max']:.2f}")
        if json_out:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result, indent=2) + "\n")


RULES = ("oov_cytoplasm_ratio", "review_fibrillar_index")


def cytoplasm_calibration(data: Path) -> dict[str, Any]:
    """Per cell crop its cytoplasm ratio and fibrillar index; per rule the per-pattern group ranges and the
    threshold (:func:`~workers.pipeline.specimen.calibrate_nuclear_max`)."""
    from hep2.vocabulary import CELL_PATTERNS
    from training.datasets import load_manifest
    from workers.pipeline.specimen import calibrate_nuclear_max, crop_cytoplasm_ratio, group_medians
    from workers.pipeline.texture import fibrillar_index

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
