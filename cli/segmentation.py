"""``hep2 train segmentation`` and ``hep2 evaluate segmentation``: the U-Net and the classical segmenter."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from analysis.segmentation import ClassicalSegmenter
from cli.apps import evaluate_app, train_app
from hep2.jsonio import write_json


@train_app.command("segmentation")
def train_segmentation(
    data: Annotated[Path | None, typer.Option(help="I3A folder (labels.csv, images/, masks/); "
                                                   "default ../shared/data/i3a-task1.")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the weights, model card and JSON-lines log.")] = Path(
        "analysis/weights"),
    name: Annotated[str, typer.Option(help="File stem of the weights and card.")] = "segmenter-default",
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    steps_per_epoch: Annotated[int, typer.Option(min=1)] = 50,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    patch: Annotated[int, typer.Option(min=64, help="Composed field side (working resolution), ×32.")] = 160,
    lr: Annotated[float, typer.Option()] = 3e-3,
    encoder: Annotated[str, typer.Option(help="smp/timm encoder (tu-<timm name>).")] = "tu-lcnet_075",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: default).")] = 0,
    workers: Annotated[int, typer.Option(help="DataLoader processes composing fields (GPU: ~CPU cores - 2).")] = 0,
    time_budget_min: Annotated[float, typer.Option(help="Stop after this many minutes (0: none).")] = 0.0,
    seed: Annotated[int, typer.Option()] = 0,
    init: Annotated[Path | None, typer.Option(help="Fine-tune from these weights instead of a random init.")] = None,
    eval_data: Annotated[Path | None, typer.Option(help="uobcs-edges folder: scored into the model card "
                                                        "after training.")] = None,
) -> None:
    """Train the U-Net segmenter from scratch on fields composed from I3A cells; write weights + card."""
    from analysis.models.unet import DEFAULT_CONFIG, UnetSegmenter  # heavy (torch): imported when the command runs
    from training.segmentation.evaluate import evaluate  # heavy (torch) with the command's other imports
    from training.segmentation.train import TrainConfig, train  # heavy (torch) with the command's other imports

    cfg = TrainConfig(data=str(data or ""), out=str(out), name=name, epochs=epochs, steps_per_epoch=steps_per_epoch,
                      batch_size=batch_size, patch=patch, lr=lr, device=device, threads=threads,
                      time_budget_min=time_budget_min, seed=seed, init=str(init or ""), workers=workers,
                      model={**DEFAULT_CONFIG, "encoder": encoder})
    card = train(cfg)
    card_path = out / f"{name}.json"
    card["command"] = shlex.join(["hep2", "train", "segmentation", *sys.argv[3:]]) if len(sys.argv) > 2 else ""
    if eval_data:
        result = evaluate(eval_data, {"unet": UnetSegmenter(weights=out / f"{name}.safetensors"),
                                      "classical": ClassicalSegmenter()})
        card["uobcs_edges"] = {k: v["overall"] for k, v in result["segmenters"].items()}
    # Promotion gate read by analysis.build.default_segmenter(): the U-Net replaces the baseline only if it
    # is not worse on the composed validation fields of held-out specimen groups AND, when --eval-data gives
    # real annotated fields, not worse there either (composed fields alone promoted a U-Net that was worse on every real
    # image; docs/segmentation.md). Real fields used here become a selection set, not an independent test.
    card["promoted"] = all(_not_worse(*pair) for pair in _gate_pairs(card))
    write_json(card_path, card)
    typer.echo(json.dumps(card.get("validation"), indent=2))


@evaluate_app.command("segmentation")
def evaluate_segmentation(
    data: Annotated[Path, typer.Option(help="Folder of <name>.png + <name>_edges.png (uobcs-edges layout).")],
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the full result as JSON.")] = None,
    segmenter: Annotated[str, typer.Option(help="unet, classical or both.")] = "both",
    weights: Annotated[Path | None, typer.Option(help="U-Net weights (default: the bundled ones).")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    truth: Annotated[str, typer.Option(help="nuclei (outlines filled, pieces cut by inner strokes merged) or "
                                            "regions (every enclosed region; the pre-2026-11-23 conversion).")
                     ] = "nuclei",
) -> None:
    """Pixel Dice / IoU and object F1 (IoU ≥ 0.5) of the segmenters on hand-outlined fields."""
    from analysis.models.unet import UnetSegmenter  # heavy (torch): imported when the command runs
    from training.segmentation.evaluate import (  # heavy (torch) with the command's other imports
        TRUTHS,
        evaluate,
        format_table,
    )

    if segmenter not in ("unet", "classical", "both"):
        raise typer.BadParameter("--segmenter must be unet, classical or both")
    if truth not in TRUTHS:
        raise typer.BadParameter(f"--truth must be one of {', '.join(TRUTHS)}")
    chosen = {}
    if segmenter in ("unet", "both"):
        chosen["unet"] = UnetSegmenter(weights=weights, device=device)
    if segmenter in ("classical", "both"):
        chosen["classical"] = ClassicalSegmenter()
    result = evaluate(data, chosen, truth)
    typer.echo(format_table(result))
    if json_out:
        write_json(json_out, result)


def _gate_pairs(card: dict) -> list[tuple[dict, dict]]:
    """(U-Net, classical) metric pairs the promotion gate compares."""
    pairs = [(card["validation"]["val"], card["validation_classical"])]
    if "uobcs_edges" in card:
        pairs.append((card["uobcs_edges"]["unet"], card["uobcs_edges"]["classical"]))
    return pairs


def _not_worse(unet: dict, classical: dict) -> bool:
    return unet["object_f1"] >= classical["object_f1"] and unet["dice"] >= classical["dice"]
