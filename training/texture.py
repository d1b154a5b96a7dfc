"""The texture model family: handcrafted descriptors (:mod:`analysis.descriptors`) + gradient-boosted trees,
cross-validated on the project's grouped folds so its out-of-fold predictions can be fused with the CNN's.

Why LightGBM rather than scikit-learn's HistGradientBoosting: LightGBM saves a model as its own plain-text
tree dump that loads without pickle (nothing executable in a model file, see
:class:`analysis.texture_model.TextureModel`), and it is single-thread controllable and about as fast;
HistGradientBoosting can only be persisted by pickling the estimator.

Class balance: every cell is weighted ``n / (K · n_class)`` (inversely to its class frequency), so rare
Golgi cells (564 of 11,611) weigh as much in total as each other class.

Hyper-parameters are fixed a priori (:data:`DEFAULT_PARAMS`, :data:`DEFAULT_ROUNDS`), not tuned on any fold.

Reproduce the cross-validation of the shipped member T3 (grouped 5-fold by ``specimen_group``, the folds of
``training.cv.grouped_kfold(y, groups, 5, seed=0)`` that the CNN experiments use) and its final fit::

    hep2 train texture --data ../shared/data/i3a-task1 --out ~/runs/tex/t3b

(the descriptor :data:`SHIPPED_DESCRIPTOR` and ``RECIPE.texture_field_copies`` field-like copies are the
defaults). ``cross_validate_texture`` writes ``cv.json`` (per-fold metrics with per-class recall, mean/std,
pooled out-of-fold metrics, specimen-level metrics) and ``oof.csv`` (the format of :mod:`training.experiment`:
``cell_id, group, fold, true, pred`` and one probability column per class in ``CLASS_NAMES`` order).
Measured on I3A (2026-12-01, this protocol): T3 pooled cell MCA 0.722 (fold mean 0.767 ± 0.074; Golgi recall
0.165: only 3 Golgi specimen groups), 55/62 specimens; the session-5 set (no size normalisation, no copies)
0.708. The other descriptor sets compared: docs/benchmarks.md and docs/results/texture-experiments-2026-12-01.md.

Descriptors are cached under ``$HEP2_TEXTURE_CACHE`` (default ``~/runs/texture/features``), keyed by the
data hash, the descriptor spec and the descriptor code's ``VALUES_REVISION``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import lightgbm as lgb
import numpy as np

from analysis.descriptors import VALUES_REVISION, Crop, DescriptorSpec, extract, feature_names
from analysis.texture_model import TextureModel
from training.cv import grouped_kfold, random_kfold
from training.datasets import CellTable
from training.metrics import CLASS_NAMES, classification_metrics, summarize_folds
from training.specimen_metrics import specimen_metrics

DEFAULT_ROUNDS = 500
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "multiclass", "num_class": len(CLASS_NAMES), "learning_rate": 0.05, "num_leaves": 31,
    "min_data_in_leaf": 20, "feature_fraction": 0.5, "bagging_fraction": 0.8, "bagging_freq": 1,
    "lambda_l2": 1.0, "num_threads": 1, "verbose": -1, "num_boost_round": DEFAULT_ROUNDS,
}


SHIPPED_DESCRIPTOR: dict[str, Any] = {"lbp": [[r, 8] for r in range(1, 7)], "lbp_sigmas": [0, 1, 2], "cell_size": 42}
"""The descriptor set of the shipped texture member (T3 in docs/benchmarks.md: LBP radii 1-6 after Gaussian
pre-smoothing σ 0/1/2, each crop resized so its cell's equivalent side is 42 px, the I3A median); every other
field is :class:`DescriptorSpec`'s default. Trained with one field-like copy of each cell
(``RECIPE.texture_field_copies``)."""


def balanced_weights(y: np.ndarray, n_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """Per-cell weights ``n / (K · n_class)`` over the classes present."""
    y = np.asarray(y)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = (counts > 0).sum()
    return (len(y) / (present * np.maximum(counts, 1)))[y]


def fit_texture(x: np.ndarray, y: np.ndarray, params: dict[str, Any] | None = None, seed: int = 0) -> lgb.Booster:
    """A class-balanced multiclass LightGBM booster on descriptor rows ``x`` and labels ``y`` (CELL_PATTERNS
    indices)."""
    p = {**DEFAULT_PARAMS, **(params or {})}
    rounds = int(p.pop("num_boost_round"))
    p.update(seed=seed, deterministic=True, force_col_wise=True)
    data = lgb.Dataset(np.asarray(x, np.float32), label=np.asarray(y), weight=balanced_weights(y, p["num_class"]),
                       free_raw_data=True)
    return lgb.train(p, data, num_boost_round=rounds)


# ----------------------------------------------------------------------------------------------- features


def cache_dir() -> Path:
    return Path(os.environ.get("HEP2_TEXTURE_CACHE") or Path.home() / "runs" / "texture" / "features")


def spec_hash(spec: DescriptorSpec) -> str:
    """Hash of the descriptor parameters, minus those that cannot change the values (batch size), and of the
    code's :data:`analysis.descriptors.VALUES_REVISION`."""
    d = {k: v for k, v in spec.to_dict().items() if k != "batch_size"} | {"values_revision": VALUES_REVISION}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def cached_features(table: CellTable, spec: DescriptorSpec, data_hash: str | None = None,
                    crops: list | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Descriptors of every cell of ``table`` (``float32 (N, F)``), from the cache when present.

    The cache file is ``<cache_dir>/<data_hash[:16]>-<spec_hash>.npy`` with a ``.json`` beside it (spec,
    names, extraction seconds)."""
    data_hash = data_hash or table.data_hash()
    base = cache_dir() / f"{data_hash[:16]}-{spec_hash(spec)}"
    npy, meta_path = base.with_suffix(".npy"), base.with_suffix(".json")
    names = feature_names(spec)
    if npy.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        x = np.load(npy, allow_pickle=False)
        if meta.get("feature_names") == names and x.shape == (len(table), len(names)):
            return x, {**meta, "cached": True}
    t0 = time.perf_counter()
    crops = crops if crops is not None else table.read_crops()
    t1 = time.perf_counter()
    x = extract(crops, spec)
    t2 = time.perf_counter()
    meta = {"data_hash": data_hash, "spec": spec.to_dict(), "feature_names": names, "n": len(table),
            "read_seconds": round(t1 - t0, 2), "extract_seconds": round(t2 - t1, 2),
            "cells_per_second": round(len(table) / max(t2 - t1, 1e-9), 1)}
    npy.parent.mkdir(parents=True, exist_ok=True)
    np.save(npy, x, allow_pickle=False)
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return x, {**meta, "cached": False}


def perturb_crops(crops: list[Crop], seed: int) -> list[Crop]:
    """One field-like copy of each crop: what differs when our segmenter cuts cells out of whole-field
    photographs (the perturbations of the CNN's ``field_aug``, :func:`training.transforms.augment`): a zoom
    ×U(0.8, 1.2) (magnification), a Gaussian blur σ ~ U(0, 1) px (optics), the mask grown, kept or shrunk by
    one pixel (segmentation) and Gaussian noise of σ ~ U(0, 0.06) of the cell's 99th percentile (camera),
    rounded back to ``uint8``. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    square = np.ones((3, 3), np.uint8)
    out: list[Crop] = []
    for image, mask in crops:
        img = np.asarray(image, np.float32)
        m = np.ones(img.shape[:2], np.uint8) if mask is None else (np.asarray(mask) > 0).astype(np.uint8)
        zoom, sigma, step, noise = rng.uniform(0.8, 1.2), rng.uniform(0, 1), rng.integers(-1, 2), rng.uniform(0, 0.06)
        h, w = img.shape[:2]
        size = (max(8, round(w * zoom)), max(8, round(h * zoom)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        m = cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
        if sigma > 0.05:
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        if step:
            changed = (cv2.dilate if step > 0 else cv2.erode)(m, square)
            m = changed if changed.any() else m
        top = float(np.percentile(img[m > 0], 99)) if m.any() else float(img.max())
        img = img + rng.normal(0.0, noise * max(top, 1.0), img.shape).astype(np.float32)
        out.append((np.clip(np.round(img), 0, 255).astype(np.uint8), m > 0))
    return out


def augmented_features(table: CellTable, spec: DescriptorSpec, copies: int, seed: int = 0,
                       data_hash: str | None = None, crops: list[Crop] | None = None) -> list[np.ndarray]:
    """Descriptors of ``copies`` field-like copies of every cell (:func:`perturb_crops`, copy k with seed
    ``seed + k``), each ``float32 (N, F)``, cached like :func:`cached_features`."""
    data_hash = data_hash or table.data_hash()
    names = feature_names(spec)
    result = []
    for k in range(copies):
        base = cache_dir() / f"{data_hash[:16]}-{spec_hash(spec)}-field{seed + k}"
        npy = base.with_suffix(".npy")
        if npy.is_file():
            x = np.load(npy, allow_pickle=False)
            if x.shape == (len(table), len(names)):
                result.append(x)
                continue
        crops = crops if crops is not None else table.read_crops()
        x = extract(perturb_crops(crops, seed + k), spec)
        npy.parent.mkdir(parents=True, exist_ok=True)
        np.save(npy, x, allow_pickle=False)
        result.append(x)
    return result


# ------------------------------------------------------------------------------------------ cross-validation


def with_copies(x: np.ndarray, copies: list[np.ndarray], y: np.ndarray, rows: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Training rows ``rows`` of ``x`` and of each field-like copy, with their labels."""
    return np.concatenate([x[rows], *(c[rows] for c in copies)]), np.tile(y[rows], 1 + len(copies))


def write_oof(path: Path, table: CellTable, y: np.ndarray, fold_of: np.ndarray, oof: np.ndarray) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "group", "fold", "true", "pred", *CLASS_NAMES])
        for i, rec in enumerate(table.records):
            w.writerow([rec.cell_id, rec.group, int(fold_of[i]), CLASS_NAMES[y[i]], CLASS_NAMES[int(oof[i].argmax())],
                        *[f"{p:.4f}" for p in oof[i]]])


def cross_validate_texture(table: CellTable, spec: DescriptorSpec, params: dict[str, Any] | None,
                           out_dir: str | Path, seed: int = 0, n_splits: int = 5, split_seed: int = 0,
                           x: np.ndarray | None = None, data_hash: str | None = None,
                           field_copies: int = 0, protocol: str = "grouped",
                           on_fold: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
                           crops: list[Crop] | None = None) -> dict[str, Any]:
    """Grouped K-fold CV (``grouped_kfold(y, groups, n_splits, split_seed)``) of the texture model; writes
    ``cv.json`` and ``oof.csv`` to ``out_dir`` and returns the summary. ``on_fold(k, test, probs)`` is
    called as each fold finishes (a training run's progress, cancellation and out-of-fold probabilities).

    ``field_copies``: also train on that many field-like copies of each training cell
    (:func:`augmented_features`; ``crops``: the table's crops when the caller holds them already); test folds
    are always scored on the original crops. ``protocol="random"``:
    stratified K-fold over cells instead (``random_kfold``, the folds of ``hep2 train cells --protocol
    random``), only to compare with published random-split numbers."""
    if protocol not in ("grouped", "random"):
        raise ValueError(f"protocol must be grouped or random, not {protocol!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y, groups = table.labels, table.groups
    data_hash = data_hash or table.data_hash()
    feat_meta: dict[str, Any] = {}
    if x is None:
        x, feat_meta = cached_features(table, spec, data_hash)
    copies = augmented_features(table, spec, field_copies, seed, data_hash, crops) if field_copies else []
    folds = (grouped_kfold(y, groups, n_splits, split_seed) if protocol == "grouped"
             else random_kfold(y, n_splits, split_seed))
    oof = np.full((len(y), len(CLASS_NAMES)), np.nan, np.float32)
    fold_of = np.full(len(y), -1)
    fold_metrics, fold_info = [], []
    names = feature_names(spec)
    gain = np.zeros(len(names))
    for k, (train, test) in enumerate(folds):
        t0 = time.perf_counter()
        booster = fit_texture(*with_copies(x, copies, y, train), params, seed)
        secs = time.perf_counter() - t0
        model = TextureModel(booster, spec, CLASS_NAMES, names)
        probs = model.predict_features(x[test])
        oof[test], fold_of[test] = probs, k
        if on_fold is not None:
            on_fold(k, test, probs)
        gain += booster.feature_importance("gain")
        m = classification_metrics(y[test], probs.argmax(1))
        sm = specimen_metrics(y[test], probs, groups[test])
        fold_metrics.append(m)
        fold_info.append({"fold": k, "n_train": len(train), "n_test": len(test),
                          "test_groups": sorted(set(groups[test].tolist())), "fit_seconds": round(secs, 1),
                          "mca": m["mca"], "accuracy": m["accuracy"],
                          "recall": {n: v["recall"] for n, v in m["per_class"].items()},
                          "specimens_correct": sm["correct"], "specimens": sm["n"]})
    pooled = classification_metrics(y, oof.argmax(1))
    top = np.argsort(-gain)[:30]
    summary = {
        "model": "texture (handcrafted descriptors + LightGBM)", "data_hash": data_hash, "n_cells": len(y),
        "n_groups": len(set(groups.tolist())), "protocol": protocol, "folds": n_splits, "split_seed": split_seed,
        "seed": seed, "descriptor": spec.to_dict(), "field_copies": field_copies, "n_features": len(names),
        "params": {**DEFAULT_PARAMS, **(params or {})}, "features": {k: v for k, v in feat_meta.items()
                                                                     if k not in ("feature_names", "spec")},
        "fold_info": fold_info, "cv_mean": summarize_folds(fold_metrics), "pooled": pooled,
        "specimen": specimen_metrics(y, oof, groups),
        "top_features_gain": [[names[i], round(float(gain[i]), 1)] for i in top],
        "fit_seconds_total": round(sum(f["fit_seconds"] for f in fold_info), 1),
        "fold_metrics": fold_metrics,
    }
    (out / "cv.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_oof(out / "oof.csv", table, y, fold_of, oof)
    return summary


def train_final(table: CellTable, spec: DescriptorSpec, params: dict[str, Any] | None, path_stem: str | Path,
                seed: int = 0, x: np.ndarray | None = None, meta: dict[str, Any] | None = None,
                field_copies: int = 0, data_hash: str | None = None, crops: list[Crop] | None = None,
                ) -> TextureModel:
    """Fit on every cell of ``table`` (and ``field_copies`` field-like copies of each) and save with
    :meth:`TextureModel.save` to ``<path_stem>.{txt,json}``. ``data_hash`` and ``crops``: the table's, when
    the caller has them already (each costs a read of every crop)."""
    data_hash = data_hash or table.data_hash()
    if x is None:
        x, _ = cached_features(table, spec, data_hash, crops)
    copies = augmented_features(table, spec, field_copies, seed, data_hash, crops) if field_copies else []
    t0 = time.perf_counter()
    booster = fit_texture(*with_copies(x, copies, table.labels, np.arange(len(x))), params, seed)
    model = TextureModel(booster, spec, CLASS_NAMES, feature_names(spec),
                         {"data_hash": data_hash, "n_cells": len(table), "params": {**DEFAULT_PARAMS, **(params or {})},
                          "seed": seed, "field_copies": field_copies,
                          "fit_seconds": round(time.perf_counter() - t0, 1), **(meta or {})})
    model.save(path_stem)
    return model
