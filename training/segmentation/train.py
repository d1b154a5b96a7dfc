"""Train the U-Net segmenter from scratch on fields composed from I3A cells (see ``compose.py``).

Every step draws a fresh batch of composed fields from the training groups' cells; after every epoch the
model is scored on a fixed set of composed fields from the held-out groups (pixel Dice, object F1 at IoU
0.5) and the best epoch is kept. Loss: BCE + soft Dice on the foreground, BCE on the normalised distance.
A JSON line per epoch goes to ``<out>/segmenter-train.jsonl``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from analysis.device import resolve_device
from analysis.models.unet import DEFAULT_CONFIG, build_model, load_model, save_weights
from analysis.segmentation import ClassicalSegmenter, labels_from_maps, normalize
from analysis.types import FieldImage
from training.card import write_card
from training.datasets import i3a_root, load_manifest
from training.segmentation.compose import CellBank, compose_batch, load_bank, split_groups
from training.segmentation.metrics import score, total


@dataclass
class TrainConfig:
    data: str = ""  # I3A folder (labels.csv); "" = ../shared/data/i3a-task1
    out: str = "analysis/weights"
    name: str = "segmenter-default"
    epochs: int = 30
    steps_per_epoch: int = 50
    batch_size: int = 8
    patch: int = 160
    val_fields: int = 24
    val_patch: int = 256
    lr: float = 3e-3
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0: torch's default)
    time_budget_min: float = 0.0  # stop after this many minutes (0: no limit)
    max_cells: int = 0  # use at most this many training cells (0: all; small for tests)
    init: str = ""  # start from these weights (fine-tuning) instead of a random init
    workers: int = 0  # DataLoader processes composing fields (0: compose in the training process)
    model: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_CONFIG))


class ComposedBatches(torch.utils.data.IterableDataset):
    """An endless stream of composed training batches; each DataLoader worker has its own seed."""

    def __init__(self, bank: CellBank, batch_size: int, patch: int, seed: int) -> None:
        self.bank, self.batch_size, self.patch, self.seed = bank, batch_size, patch, seed

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            signals, _, dist = compose_batch(self.bank, self.batch_size, self.patch, rng)
            yield signals, dist


def loss_fn(logits: torch.Tensor, fg: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice on the foreground (channel 0) + BCE on the distance target (channel 1)."""
    p = torch.sigmoid(logits[:, 0])
    dice = 1 - (2 * (p * fg).sum() + 1) / (p.sum() + fg.sum() + 1)
    return (F.binary_cross_entropy_with_logits(logits[:, 0], fg) + dice
            + F.binary_cross_entropy_with_logits(logits[:, 1], dist))


def to_input(signals: np.ndarray, cfg: dict[str, Any]) -> torch.Tensor:
    """Composed signals → the network's normalised (N, 1, H, W) input."""
    x = np.stack([normalize(s, cfg["norm_lo"], cfg["norm_hi"], cfg["norm_floor"]) for s in signals])
    return torch.from_numpy(x[:, None])


@torch.inference_mode()
def validate(model: torch.nn.Module, val: tuple[np.ndarray, np.ndarray, np.ndarray], cfg: dict[str, Any],
             device: torch.device, min_area: int = 10) -> dict[str, float | int]:
    """Dice / IoU / object F1 of the model on fixed composed validation fields (working resolution)."""
    model.eval()
    signals, labels, _ = val
    scores = []
    for i in range(0, len(signals), 8):
        pred = torch.sigmoid(model(to_input(signals[i:i + 8], cfg).to(device))).float().cpu().numpy()
        for j, maps in enumerate(pred):
            scores.append(score(labels[i + j], labels_from_maps(maps[0], maps[1], min_area=min_area)))
    model.train()
    return total(scores).summary()


def validate_classical(val: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float | int]:
    """The classical baseline on the same composed validation fields (the U-Net's promotion gate)."""
    segmenter, scores = ClassicalSegmenter(min_area=10), []
    for signal, truth in zip(val[0], val[1], strict=True):
        signal = np.asarray(signal, dtype=np.float32)
        field = FieldImage(signal, 8, "composed", "composed field", np.zeros(signal.shape, dtype=bool))
        scores.append(score(truth, segmenter.segment(field)))
    return total(scores).summary()


def validation_fields(cfg: TrainConfig, table: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed composed fields of held-out specimen groups that every epoch is validated on."""
    _, val_idx = split_groups(table.groups, seed=cfg.seed)
    if cfg.max_cells:
        val_idx = val_idx[:: max(1, len(val_idx) // cfg.max_cells)]
    return compose_batch(load_bank(table, val_idx), cfg.val_fields, cfg.val_patch, np.random.default_rng(10_000))


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, keep the best epoch by validation object F1 + Dice, write weights + model card; the card."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    data = Path(cfg.data) if cfg.data else i3a_root()
    table = load_manifest(data / "labels.csv")
    train_idx, _ = split_groups(table.groups, seed=cfg.seed)
    if cfg.max_cells:
        train_idx = train_idx[:: max(1, len(train_idx) // cfg.max_cells)]
    bank: CellBank = load_bank(table, train_idx)
    val = validation_fields(cfg, table)
    if cfg.init:
        model, cfg.model = load_model(cfg.init, device)
        model.train()
    else:
        model = build_model(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * cfg.steps_per_epoch)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / f"{cfg.name}-train.jsonl"
    start, best, history = time.time(), (-1.0, None), []
    stream = iter(torch.utils.data.DataLoader(ComposedBatches(bank, cfg.batch_size, cfg.patch, cfg.seed),
                                              batch_size=None, num_workers=cfg.workers,
                                              persistent_workers=cfg.workers > 0))
    for epoch in range(cfg.epochs):
        losses = []
        for _ in range(cfg.steps_per_epoch):
            signals, dist = next(stream)
            x = to_input(np.asarray(signals), cfg.model).to(device)
            dist = torch.as_tensor(dist).to(device)
            loss = loss_fn(model(x), (dist > 0).float(), dist)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
        metrics = validate(model, val, cfg.model, device)
        row = {"epoch": epoch + 1, "loss": round(float(np.mean(losses)), 4), "val": metrics,
               "elapsed_s": round(time.time() - start, 1)}
        history.append(row)
        with log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        key = metrics["object_f1"] + metrics["dice"]
        if key > best[0]:
            best = (key, row)
            save_weights(model, out / f"{cfg.name}.safetensors", cfg.model)
        if cfg.time_budget_min and time.time() - start > 60 * cfg.time_budget_min:
            break
    card = {"model": "segmentation-models-pytorch " + cfg.model["arch"], "architecture": cfg.model,
            "trained_from_scratch": True, "training": asdict(cfg), "data": str(data),
            "data_hash": table.data_hash(), "train_cells": len(bank), "validation": best[1],
            "validation_classical": validate_classical(val),
            "epochs_run": len(history), "train_seconds": round(time.time() - start, 1),
            "validation_protocol": "composed fields (compose.py) of held-out I3A specimen groups, "
                                   f"{cfg.val_fields} x {cfg.val_patch}px at working resolution"}
    write_card(out / f"{cfg.name}.json", **card)
    return card
