"""``hep2 analyze``, ``hep2 evaluate fields`` and ``hep2 evaluate cytoplasm``: the pipeline on local files.

The models come from :func:`analysis.build.build_models`, as in the workers (without the registry: the
bundled weights, a pinned classifier or ``--classifier``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from analysis.config import PipelineConfig, load_config
from analysis.models import ModelWeights
from analysis.overlay_files import write_overlay
from cli.apps import app, evaluate_app
from hep2.jsonio import write_json
from hep2.settings import get_settings


def cli_models(classifier: Path | None, segmenter: str, device: str, cfg: PipelineConfig) -> Any:
    """Models for the CLI: ``segmenter`` default | unet | classical (default = ``HEP2_SEGMENTER``), the
    classical one with the lab's ``cfg.segmentation``; ``classifier`` overrides the bundled/pinned weights."""
    from analysis.build import build_models  # heavy (torch): imported when a command runs

    weights = ModelWeights(cell_pattern=classifier) if classifier else None  # None: pinned or bundled
    return build_models(get_settings(), cfg, weights, segmenter=None if segmenter == "default" else segmenter,
                        device=device)


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
    from analysis.analyze import analyze_field  # heavy (torch): imported when the command runs
    from analysis.types import InvalidImageError  # heavy (torch) with the command's other imports

    cfg, results = load_config(config), {}
    models = cli_models(classifier, segmenter, device, cfg)
    sixteen = get_settings().accept_16bit if accept_16bit is None else accept_16bit
    header = f"{'file':<28} {'intensity':<22} {'pattern':<17} {'ICAP':<10} {'second':<17} {'cells':>5}  review"
    typer.echo(header)
    for path in files:
        try:
            data = path.read_bytes()
            r = analyze_field(data, models, config=cfg, title=path.name, accept_16bit=sixteen)
        except (InvalidImageError, OSError) as exc:
            typer.echo(f"{path.name:<28} REJECTED: {exc}")
            results[str(path)] = {"error": str(exc)}
            continue
        s, i = r.specimen, r.intensity
        typer.echo(f"{path.name:<28} {i.intensity_class + f' ({i.index:.1f})':<22} {s.pattern:<17} "
                   f"{s.icap or '-':<10} {s.second_pattern or '-':<17} {s.cells_used:>5}  "
                   f"{'yes: ' + '; '.join(s.reasons) if s.needs_review else 'no'}")
        if overlay_dir:
            write_overlay(overlay_dir / f"{path.stem}.overlay.png", data, r, sixteen)
        results[str(path)] = r.to_dict(with_cells=cells)
    if json_out:
        write_json(json_out, results)

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
    from training.fields import evaluate_fields  # heavy (torch): imported when the command runs

    cfg = load_config(config)
    result = evaluate_fields(data, cli_models(classifier, segmenter, device, cfg), cfg, overlay_dir,
                             accept_16bit=get_settings().accept_16bit)
    write_json(json_out, result)
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
    from training.fields import RULES, cytoplasm_calibration  # heavy (torch): imported when the command runs

    result = cytoplasm_calibration(data)
    for rule in RULES:
        typer.echo(f"{rule} = {result[rule]['threshold']}")
        for name, r in result[rule]["per_pattern"].items():
            typer.echo(f"  {name:<18} groups {r['groups']:>3}  group medians {r['min']:.2f} .. {r['max']:.2f}")
    if json_out:
        write_json(json_out, result)
