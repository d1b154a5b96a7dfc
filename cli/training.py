"""``hep2 train cells``, ``hep2 evaluate cells`` and ``hep2 evaluate cv-ensemble``: offline cell-classifier
experiments. Training modules import torch: they are imported when a command runs, not at ``hep2 --help``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer

from cli.apps import evaluate_app, train_app
from hep2.jsonio import write_json
from hep2.storage import ObjectStorage, storage_from_settings
from training.recipe import RECIPE


def _parse_split(text: str | None) -> tuple[float, ...] | None:
    if not text:
        return None
    parts = [float(p) for p in text.replace(",", "/").split("/")]
    return tuple(p / sum(parts) for p in parts)


def _storage(enabled: bool) -> ObjectStorage | None:
    return storage_from_settings() if enabled else None


def _command_line(ctx: typer.Context) -> str:
    """The invoked command with every option spelled out (defaults included): reproducible as is."""
    names, node = [], ctx
    while node.parent is not None:  # sub-command names up to (not including) the root program
        names.insert(0, node.info_name or "")
        node = node.parent
    words = ["hep2", *names]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if value is None or param.hidden or param.name in ("progress",):
            continue
        if isinstance(value, bool):
            words.append(param.opts[0] if value else (param.secondary_opts or [""])[0])
        else:
            words += [param.opts[0], str(value)]
    return shlex.join(w for w in words if w)


@train_app.command("cells")
def train_cells(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="Folder with labels.csv (I3A layout) or a manifest CSV.")],
    out: Annotated[Path, typer.Option(help="Run folder: logs, fold metrics, checkpoints, model card.")],
    protocol: Annotated[str, typer.Option(help="grouped (by specimen_group) or random.")] = "grouped",
    model: Annotated[str, typer.Option(help="resnet18_w32, resnet10_w32, resnet18, efficientnet_b0, "
                                            "convnext_atto, vit_tiny or any timm name.")] = RECIPE.arch,
    epochs: Annotated[int, typer.Option(min=1)] = RECIPE.epochs,
    folds: Annotated[int, typer.Option(min=2)] = RECIPE.folds,
    split: Annotated[str | None, typer.Option(help="random protocol: one split instead of K folds, "
                                                   "e.g. 70/15/15 (seed 001) or 90/10 (seed 004).")] = None,
    img_size: Annotated[int, typer.Option(min=16)] = RECIPE.img_size,
    mask: Annotated[bool, typer.Option(help="Feed the cell mask as a second channel.")] = RECIPE.use_mask,
    batch_size: int = RECIPE.batch_size,
    lr: float = RECIPE.lr,
    patience: Annotated[int, typer.Option(help="Early-stopping patience in epochs (0: off).")] = RECIPE.patience,
    balance: Annotated[str, typer.Option(help="sampler, loss or none (Golgi is rare).")] = RECIPE.balance,
    field_aug: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Per-sample probability of whole-field acquisition augmentation (zoom, blur, "
                               "noise, mask error).")] = RECIPE.field_aug,
    tta: Annotated[int, typer.Option(help="Test-time views: 1 or 8 (dihedral).")] = RECIPE.tta,
    seed: Annotated[int, typer.Option(help="Training seed (initialisation, sampling, augmentation).")] = RECIPE.seed,
    split_seed: Annotated[int, typer.Option(help="Seed of the folds and validation splits.")] = RECIPE.split_seed,
    device: str = "auto",
    precision: Annotated[str, typer.Option(help="auto (AMP on CUDA, bf16 on CPUs with native bf16, else fp32), "
                                                "fp32 or bf16.")] = RECIPE.precision,
    channels_last: Annotated[bool | None, typer.Option("--channels-last/--channels-first",
                                                       help="NHWC memory format; default: on CUDA and with bf16.")
                             ] = RECIPE.channels_last,
    resume: Annotated[bool, typer.Option(help="Continue a stopped run in --out from its per-epoch training "
                                              "states (the same command); --no-resume starts over.")] = True,
    cv: Annotated[bool, typer.Option(help="Run the cross-validation / split evaluation.")] = True,
    final_fit: Annotated[bool, typer.Option(help="Fit on all cells and write final/ + model card.")] = True,
    export: Annotated[str | None, typer.Option(help="Ship final model as analysis/weights/NAME.*")] = None,
    export_dir: Annotated[Path | None, typer.Option(help="Where --export writes.", hidden=True)] = None,
    limit: Annotated[int | None, typer.Option(help="Use a random subset of N cells (smoke tests).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop each fit after N steps (smoke tests).")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
    from_storage: Annotated[bool, typer.Option(help="--data is a manifest key in the configured object "
                                                    "storage (HEP2_STORAGE_*, e.g. S3).")] = False,
    progress: bool = True,
) -> None:
    """Train the cell staining-pattern classifier under an evaluation protocol."""
    import torch  # heavy: imported when the command runs

    from analysis.models import WEIGHTS_DIR  # heavy (torch) with the command's other imports
    from training.experiment import ExperimentConfig, run_cells  # heavy (torch)
    from training.experiment import export as export_run  # heavy (torch) with the command's other imports

    if protocol not in ("grouped", "random"):
        raise typer.BadParameter("protocol must be grouped or random")
    if split and protocol != "random":
        raise typer.BadParameter("--split only applies to --protocol random")
    if threads:
        torch.set_num_threads(threads)
    recipe = RECIPE.with_(arch=model, img_size=img_size, use_mask=mask, epochs=epochs, batch_size=batch_size,
                          lr=lr, patience=patience, balance=balance, field_aug=field_aug, tta=tta, folds=folds,
                          precision=precision, channels_last=channels_last, seed=seed, split_seed=split_seed)
    model_cfg = recipe.model_config()
    train_cfg = recipe.train_config(device=device, max_steps=max_steps, progress=progress)
    exp = ExperimentConfig(protocol=protocol, folds=folds, split=_parse_split(split), tta=tta, cv=cv,
                           final_fit=final_fit or bool(export), limit=limit, val_fraction=recipe.val_fraction,
                           split_seed=split_seed, resume=resume)
    summary = run_cells(data.as_posix(), out, model_cfg, train_cfg, exp, command=_command_line(ctx),
                        storage=_storage(from_storage))
    if "cv_mean" in summary:
        mean = summary["cv_mean"]
        typer.echo(f"{protocol}: MCA {mean['mca']['mean']:.4f} ± {mean['mca']['std']:.4f} "
                   f"(folds {', '.join(f'{v:.3f}' for v in mean['mca']['folds'])}), "
                   f"accuracy {mean['accuracy']['mean']:.4f}, pooled MCA {summary['pooled']['mca']:.4f}, "
                   f"golgi recall (pooled) {summary['pooled']['per_class']['golgi']['recall']}")
        if "specimen" in summary:
            _echo_specimens(summary["specimen"])
    if export:
        weights, card = export_run(out, export_dir or WEIGHTS_DIR, export)
        typer.echo(f"exported {weights} and {card}")


def _echo_specimens(spec: dict) -> None:
    typer.echo(f"specimens: {spec['correct']}/{spec['n']} right (accuracy {spec['accuracy']:.4f}, specimen MCA "
               f"{spec['mca']:.4f})")
    for w in spec["wrong"]:
        typer.echo(f"  {w['group']}: {w['true']} called {w['pred']} ({w['p_top']:.2f}; second {w['second']} "
                   f"{w['p_second']:.2f})")


@evaluate_app.command("cells")
def evaluate_cells_cmd(
    data: Annotated[Path, typer.Option(help="Folder with labels.csv (I3A layout) or a manifest CSV.")],
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the metrics JSON.")],
    model: Annotated[list[Path] | None, typer.Option(help="A fused model (.json) or CNN checkpoint (.safetensors; "
                                                         "repeat: averaging ensemble); default: the bundled "
                                                         "one.")] = None,
    tta: Annotated[int | None, typer.Option(help="1 or 8; default: the model card's.")] = None,
    batch_size: int = 256,
    device: str = "auto",
    limit: int | None = None,
    png: Annotated[bool, typer.Option(help="Also write the confusion matrix PNG beside the JSON.")] = True,
    from_storage: Annotated[bool, typer.Option(help="--data is a manifest key in object storage.")] = False,
) -> None:
    """Evaluate a cell classifier; prints MCA, accuracy and per-class recall."""
    from training.evaluate import evaluate_cells  # heavy (torch)
    from training.metrics import save_confusion_png  # heavy (matplotlib)

    result = evaluate_cells(data.as_posix(), model, tta=tta, batch_size=batch_size, device=device,
                            limit=limit, storage=_storage(from_storage))
    write_json(json_out, result)
    if png:
        save_confusion_png(result, json_out.with_suffix(".png"))
    typer.echo(f"cells {result['n_cells']}  MCA {result['mca']:.4f}  accuracy {result['accuracy']:.4f}")
    for name, pc in result["per_class"].items():
        recall = "n/a" if pc["recall"] is None else f"{pc['recall']:.4f}"
        typer.echo(f"  {name:<17} recall {recall}  (n={pc['support']})")
    if "specimen" in result:
        _echo_specimens(result["specimen"])
    speed = result["throughput"]
    typer.echo(f"  {speed['model_cells_per_s']:.0f} cells/s on {speed['device']}")
    if "warning" in result:
        typer.echo(f"warning: {result['warning']}", err=True)


@evaluate_app.command("cv-ensemble")
def cv_ensemble_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders of `hep2 train cells` on the same folds.")],
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the metrics JSON.")],
) -> None:
    """Cross-validated metrics of an averaging ensemble of finished runs (from their oof.csv)."""
    from training.experiment import ensemble_runs  # heavy (torch)

    result = ensemble_runs(runs)
    write_json(json_out, result)
    mca = result["cv_mean"]["mca"]
    typer.echo(f"ensemble of {len(runs)}: MCA {mca['mean']:.4f} ± {mca['std']:.4f} "
               f"(members, pooled: {', '.join(f'{m:.4f}' for m in result['member_pooled_mca'])}), "
               f"pooled MCA {result['pooled']['mca']:.4f}")


@train_app.command("texture")
def train_texture(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option(help="Folder with labels.csv (I3A layout) or a manifest CSV.")],
    out: Annotated[Path, typer.Option(help="Run folder: cv.json, oof.csv, the final model.")],
    descriptor: Annotated[str | None, typer.Option(help="DescriptorSpec fields as JSON; default: the shipped set "
                                                        "(training.texture.SHIPPED_DESCRIPTOR).")] = None,
    folds: Annotated[int, typer.Option(min=2)] = RECIPE.folds,
    split_seed: Annotated[int, typer.Option(help="Seed of the folds (the CNN runs' one).")] = RECIPE.split_seed,
    seed: int = RECIPE.seed,
    cv: Annotated[bool, typer.Option(help="Run the cross-validation.")] = True,
    protocol: Annotated[str, typer.Option(help="grouped (by specimen_group) or random (cells; inflated, only to "
                                               "compare with papers).")] = "grouped",
    final_fit: Annotated[bool, typer.Option(help="Fit on all cells: <out>/texture.{txt,json}.")] = True,
    field_copies: Annotated[int, typer.Option(
        min=0, help="Also train on this many field-like copies of each cell (training.texture.perturb_crops).",
    )] = RECIPE.texture_field_copies,
) -> None:
    """The texture-feature cell model (descriptors + LightGBM): grouped CV on the CNN's folds, final fit."""
    from analysis.descriptors import DescriptorSpec  # heavy (torch) with the command's other imports
    from training.datasets import load_manifest  # heavy (torch) with the command's other imports
    from training.texture import (  # heavy (lightgbm): when the command runs
        SHIPPED_DESCRIPTOR,
        cross_validate_texture,
        train_final,
    )

    table = load_manifest(data.as_posix())
    spec = DescriptorSpec.from_dict(json.loads(descriptor) if descriptor else SHIPPED_DESCRIPTOR)
    if cv:
        summary = cross_validate_texture(table, spec, None, out, seed=seed, n_splits=folds, split_seed=split_seed,
                                         field_copies=field_copies, protocol=protocol)
        mean = summary["cv_mean"]
        typer.echo(f"{protocol}: MCA {mean['mca']['mean']:.4f} ± {mean['mca']['std']:.4f}, pooled MCA "
                   f"{summary['pooled']['mca']:.4f}, golgi recall (pooled) "
                   f"{summary['pooled']['per_class']['golgi']['recall']}")
        _echo_specimens(summary["specimen"])
    if final_fit:
        train_final(table, spec, None, out / "texture", seed=seed, meta={"command": _command_line(ctx)},
                    field_copies=field_copies)
        typer.echo(f"final model: {out / 'texture.json'}")


@train_app.command("fusion")
def train_fusion(
    ctx: typer.Context,
    cnn_run: Annotated[Path, typer.Option(help="Run folder of `hep2 train cells` (oof.csv, cv.json).")],
    texture_run: Annotated[Path, typer.Option(help="Run folder of `hep2 train texture` on the same folds.")],
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the nested-CV report.")],
    cnn_weights: Annotated[Path | None, typer.Option(help="The CNN member to ship (its final fit).")] = None,
    texture_model: Annotated[Path | None, typer.Option(help="The texture member to ship (texture.json).")] = None,
    export: Annotated[Path | None, typer.Option(help="Write the fused model here (a .json; members beside it).")
                      ] = None,
) -> None:
    """Fuse the CNN and texture families with per-class weights chosen on out-of-fold predictions (nested)."""
    from training.fusion import fuse_runs, write_fused_model  # heavy (torch): imported when the command runs

    result = fuse_runs(cnn_run, texture_run)
    nested = result["nested"]
    report = {k: v for k, v in result.items() if k not in ("final_weights", "groups")}
    report["nested"] = {k: v for k, v in nested.items() if k != "fused_oof"}
    report["command"] = _command_line(ctx)
    write_json(json_out, report)
    for name, member in result["members"].items():
        typer.echo(f"{name}: MCA {member['mca']:.4f}, specimens {member['specimen']['correct']}/"
                   f"{member['specimen']['n']}")
    mean = nested["cv_mean"]
    typer.echo(f"fused (nested): MCA {mean['mca']['mean']:.4f} ± {mean['mca']['std']:.4f}, pooled MCA "
               f"{nested['pooled']['mca']:.4f}, golgi recall {nested['pooled']['per_class']['golgi']['recall']}")
    _echo_specimens(nested["specimen"])
    typer.echo(f"final CNN weight per class: {result['final_cnn_weights']}")
    if export:
        if not (cnn_weights and texture_model):
            raise typer.BadParameter("--export needs --cnn-weights and --texture-model")
        path = write_fused_model(result, cnn_weights, texture_model, export, {"command": _command_line(ctx)})
        typer.echo(f"fused model: {path}")
