"""Evaluate a cell classifier on a manifest: metrics, confusion matrix and batched throughput."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from analysis.device import hardware
from analysis.models.fused import load_cell_classifier
from analysis.models.inference import CellClassifier
from hep2.storage import ObjectStorage
from training.datasets import load_manifest
from training.metrics import classification_metrics
from training.specimen_metrics import specimen_metrics


def evaluate_cells(data: str | Path, weights: str | Path | list[Path] | None = None, tta: int | None = None,
                   batch_size: int = 256, device: str = "auto", limit: int | None = None,
                   storage: ObjectStorage | None = None) -> dict[str, Any]:
    """Metrics of ``weights`` (default: the bundled model; a ``.json`` fused model or one or several CNN
    checkpoints) on every cell of ``data``, at cell level and, with specimen groups, at specimen level.

    Adds ``warning`` when the model card says the model was trained on exactly these cells.
    """
    several = isinstance(weights, list) and len(weights) > 1
    clf = (CellClassifier(weights, device=device, tta=tta, batch_size=batch_size) if several else
           load_cell_classifier(weights[0] if isinstance(weights, list) else weights, device=device))
    cnn_alone = isinstance(clf, CellClassifier)  # else a fused model, which pre-processes for its members
    for cnn in [clf] if cnn_alone else [m for m in clf.members if isinstance(m, CellClassifier)]:
        cnn.batch_size, cnn.tta = batch_size, tta if tta is not None else cnn.tta
    table = load_manifest(data, storage)
    if limit and limit < len(table):
        table = table.subset(range(limit))
    t0 = time.perf_counter()
    x = table.load(clf.config.img_size, clf.config.use_mask) if cnn_alone else table.read_crops()
    t_pre = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs = clf.predict_array(x) if cnn_alone else clf.predict(x)
    t_model = time.perf_counter() - t0
    result: dict[str, Any] = {
        "data": str(data), "weights": [str(p) for p in clf.paths], "tta": clf.tta, "n_cells": len(table),
        **classification_metrics(table.labels, probs.argmax(1)),
        "throughput": {"device": str(clf.device), "batch_size": batch_size,
                       "model_cells_per_s": len(table) / max(t_model, 1e-9),
                       "preprocess_cells_per_s": len(table) / max(t_pre, 1e-9),
                       "hardware": hardware()},
    }
    if table.has_groups:  # specimen level, aggregated as the pipeline's specimen stage does
        result["specimen"] = specimen_metrics(table.labels, probs, table.groups)
    if clf.card.get("data_hash") and clf.card["data_hash"] == table.data_hash():
        result["warning"] = ("the model was trained on these very cells: these are training-set numbers, "
                             "see the model card for cross-validated ones")
    return result
