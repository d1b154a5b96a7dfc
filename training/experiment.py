"""One evaluation protocol end to end: load cells, split, train per fold, evaluate with TTA, write
metrics/confusion/OOF predictions, then optionally a final fit on all cells with a model card.

Output layout under ``out``::

    log.jsonl                 every epoch of every fold (JSON lines)
    fold{k}/metrics.json      test-fold metrics (+ confusion.png, model.safetensors)
    cv.json                   per-fold metrics, mean/std, pooled out-of-fold metrics (+ confusion.png)
    oof.csv                   out-of-fold probabilities per cell
    final/model.safetensors   final fit on all cells, final/model.json its model card
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from analysis.models.classifier import ModelConfig, count_parameters, save_checkpoint
from analysis.specimen import calibrate_oov
from hep2.jsonio import write_json
from hep2.storage import ObjectStorage
from training.card import write_card
from training.crossval import Fold, cross_validate, inner_split
from training.cv import grouped_kfold, random_kfold, random_split
from training.datasets import CellTable, load_manifest
from training.metrics import CLASS_NAMES, classification_metrics, save_confusion_png, summarize_folds
from training.recipe import RECIPE
from training.specimen_metrics import specimen_metrics
from training.trainer import JsonlLogger, TrainConfig, fit


@dataclass
class ExperimentConfig:
    protocol: Literal["grouped", "random"] = "grouped"
    folds: int = RECIPE.folds
    split: tuple[float, ...] | None = None  # random protocol only: one split, e.g. (0.7, 0.15, 0.15)
    val_fraction: float = RECIPE.val_fraction  # inner validation share of each training fold (by group if grouped)
    tta: int = RECIPE.tta
    cv: bool = True
    final_fit: bool = True
    half_weights: bool = True  # float16 safetensors (a few MB)
    limit: int | None = None  # keep a random subset of this many cells (smoke tests)
    workers: int = 4
    resume: bool = True  # continue a stopped run from its per-epoch training states (foldK/train_state.pt)
    split_seed: int = RECIPE.split_seed  # folds and inner splits: runs with other training seeds share them


def make_folds(y: np.ndarray, groups: np.ndarray, exp: ExperimentConfig, seed: int) -> list[Fold]:
    """The protocol's (train, validation, test) index triples; validation None = drawn inside train."""
    if exp.protocol == "grouped":
        return [(tr, None, te) for tr, te in grouped_kfold(y, groups, exp.folds, seed)]
    if exp.split is not None:
        parts = random_split(y, exp.split, seed)
        return [(parts[0], parts[1], parts[2])] if len(parts) == 3 else [(parts[0], None, parts[1])]
    return [(tr, None, te) for tr, te in random_kfold(y, exp.folds, seed)]


def run_cells(data: str | Path, out: str | Path, model_cfg: ModelConfig, train_cfg: TrainConfig,
              exp: ExperimentConfig, command: str = "",
              storage: ObjectStorage | None = None) -> dict[str, Any]:
    """Run the protocol on the manifest ``data``; returns (and writes) the CV summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table: CellTable = load_manifest(data, storage)
    if exp.limit and exp.limit < len(table):
        rng = np.random.default_rng(exp.split_seed)
        table = table.subset(sorted(rng.choice(len(table), exp.limit, replace=False)))
    t0 = time.time()
    data_hash = table.data_hash()
    x, y, groups = table.load(model_cfg.img_size, model_cfg.use_mask, exp.workers), table.labels, table.groups
    grouped = exp.protocol == "grouped"
    log = JsonlLogger(out / "log.jsonl")
    log.log("data", n=len(table), data_hash=data_hash, load_seconds=round(time.time() - t0, 1),
            protocol=exp.protocol, experiment=asdict(exp))
    summary: dict[str, Any] = {"command": command, "data": str(data), "data_hash": data_hash,
                               "data_hash_method": "sha256(manifest bytes + sha256 of each image and mask "
                                                   "file, in manifest order)",
                               "n_cells": len(table), "n_groups": len(set(groups)),
                               "protocol": exp.protocol, "split": exp.split, "folds": exp.folds,
                               "tta": exp.tta, "model": model_cfg.to_dict(), "train": train_cfg.to_dict()}
    if exp.cv:
        summary.update(_cross_validate(table, x, y, groups, grouped, model_cfg, train_cfg, exp, out, log))
        write_json(out / "cv.json", summary)
    else:
        summary.update(_earlier_cv(out / "cv.json", summary))
    if exp.final_fit:
        tr, va = inner_split(np.arange(len(y)), y, groups if grouped and table.has_groups else None,
                             exp.val_fraction, exp.split_seed)
        res = fit(x[tr], y[tr], model_cfg, replace(train_cfg, checkpoint=str(_state_file(out / "final", exp.resume))),
                  x[va], y[va], JsonlLogger(out / "log.jsonl", fold="final"))
        ckpt = save_checkpoint(res.model, model_cfg, out / "final" / "model.safetensors",
                               half=exp.half_weights, extra={"tta": exp.tta, "data_hash": data_hash})
        card = {k: v for k, v in summary.items() if k not in ("oof",)}
        card.update({"weights": ckpt.name, "parameters": count_parameters(res.model),
                     "final_fit": {"best_epoch": res.best_epoch, "inner_val_mca": res.best_val_mca,
                                   "n_train": len(tr), "n_val": len(va), "seconds": round(res.seconds, 1)}})
        write_card(out / "final" / "model.json", **card)
        summary["final"] = str(ckpt)
    return summary


def _state_file(folder: Path, resume: bool) -> Path:
    """A fit's per-epoch training state (``--no-resume`` removes an earlier one first)."""
    path = folder / "train_state.pt"
    if not resume:
        path.unlink(missing_ok=True)
    return path


def _earlier_cv(path: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The CV results of an earlier run of the same recipe on the same data in this folder (``--no-cv``
    after a CV run: the final fit's model card still carries its CV), else nothing."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    if _recipe(earlier) != _recipe(json.loads(json.dumps(summary))):  # tuples → lists, as stored
        return {}
    keys = ("fold_info", "fold_metrics", "cv_mean", "pooled", "specimen", "specimen_thresholds")
    return {**{k: earlier[k] for k in keys if k in earlier}, "cv_command": earlier.get("command")}


def _recipe(summary: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs' CV interchangeable: data, protocol, model and training settings."""
    train = {k: v for k, v in summary.get("train", {}).items() if k not in ("progress", "device", "checkpoint")}
    return {**{k: summary.get(k) for k in ("data_hash", "protocol", "split", "folds", "tta", "model")},
            "train": train}


def _cross_validate(table: CellTable, x: np.ndarray, y: np.ndarray, groups: np.ndarray, grouped: bool,
                    model_cfg: ModelConfig, train_cfg: TrainConfig, exp: ExperimentConfig, out: Path,
                    log: JsonlLogger) -> dict[str, Any]:
    folds = make_folds(y, groups, exp, exp.split_seed)
    oof = np.full((len(y), len(CLASS_NAMES)), np.nan, dtype=np.float32)
    fold_of = np.full(len(y), -1)
    fold_metrics, fold_info = [], []
    for outcome in cross_validate(x, y, groups if grouped else None, folds, model_cfg, train_cfg, exp.tta,
                                  exp.val_fraction, exp.split_seed,
                                  lambda k: JsonlLogger(out / "log.jsonl", fold=k),
                                  lambda k: str(_state_file(out / f"fold{k}", exp.resume))):
        k, test, m, res = outcome.fold, outcome.test, outcome.metrics, outcome.fit
        oof[test], fold_of[test] = outcome.probs, k
        fold_dir = out / f"fold{k}"
        save_checkpoint(res.model, model_cfg, fold_dir / "model.safetensors", half=exp.half_weights)
        write_json(fold_dir / "metrics.json", m)
        save_confusion_png(m, fold_dir / "confusion.png", f"fold {k}: MCA {m['mca']:.3f}")
        info = {"fold": k, "n_train": len(outcome.train), "n_val": len(outcome.val), "n_test": len(test),
                "test_groups": sorted(set(groups[test])) if grouped else None, "best_epoch": res.best_epoch,
                "inner_val_mca": res.best_val_mca, "seconds": round(res.seconds, 1),
                "mca": m["mca"], "accuracy": m["accuracy"],
                "recall": {n: v["recall"] for n, v in m["per_class"].items()}}
        fold_info.append(info)
        fold_metrics.append(m)
        log.log("fold", **info)
    tested = ~np.isnan(oof[:, 0])
    pooled = classification_metrics(y[tested], oof[tested].argmax(1))
    save_confusion_png(pooled, out / "confusion.png", f"{exp.protocol}, pooled test folds: "
                       f"MCA {pooled['mca']:.3f}")
    with (out / "oof.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["cell_id", "group", "fold", "true", "pred", *CLASS_NAMES])
        for i in np.flatnonzero(tested):
            rec = table.records[i]
            w.writerow([rec.cell_id, rec.group, fold_of[i], CLASS_NAMES[y[i]], CLASS_NAMES[int(oof[i].argmax())],
                        *[f"{p:.4f}" for p in oof[i]]])
    result = {"fold_info": fold_info, "fold_metrics": fold_metrics, "cv_mean": summarize_folds(fold_metrics),
              "pooled": pooled}
    if grouped:
        result["specimen"] = specimen_metrics(y[tested], oof[tested], groups[tested])
        result["specimen_thresholds"] = oov_thresholds(oof[tested], groups[tested])
    return result


def oov_thresholds(probs: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """The pipeline's out-of-vocabulary thresholds for this classifier, from out-of-fold predictions on
    held-out specimen groups (all in the vocabulary); the specimen stage reads them from the model card."""
    return {**calibrate_oov(probs, groups), "calibrated_on": f"out-of-fold predictions, {len(set(groups))} "
            "held-out specimen groups (specimen.calibrate_oov)"}


def export(run_dir: str | Path, weights_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Copy a run's final model and card to ``weights_dir/name.{safetensors,json}`` (shipping)."""
    src, dst = Path(run_dir) / "final", Path(weights_dir)
    dst.mkdir(parents=True, exist_ok=True)
    w, c = dst / f"{name}.safetensors", dst / f"{name}.json"
    shutil.copyfile(src / "model.safetensors", w)
    card = json.loads((src / "model.json").read_text())
    card["weights"] = w.name
    card.pop("fold_metrics", None)  # the per-fold confusion matrices stay in the run folder's cv.json
    if "specimen_thresholds" not in card and card.get("protocol") == "grouped" and (src.parent / "oof.csv").is_file():
        rows = _oof_rows(src.parent)  # runs made before the card carried them
        card["specimen_thresholds"] = oov_thresholds(_oof_probs(rows), np.array([r["group"] for r in rows]))
    write_json(c, card)
    return w, c


def read_oof(run_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """cell ids, true labels, fold numbers and probabilities of a run's ``oof.csv``."""
    cv = json.loads((run_dir / "cv.json").read_text())
    group_fold = {g: i["fold"] for i in cv["fold_info"] for g in (i.get("test_groups") or [])}
    rows = _oof_rows(run_dir)
    ids = [r["cell_id"] for r in rows]
    y = np.array([CLASS_NAMES.index(r["true"]) for r in rows])
    folds = np.array([int(r["fold"]) if "fold" in r else group_fold[r["group"]] for r in rows])
    return ids, y, folds, _oof_probs(rows)


def _oof_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "oof.csv").open() as fh:
        return list(csv.DictReader(fh))


def _oof_probs(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(r[c]) for c in CLASS_NAMES] for r in rows], dtype=np.float32)


def ensemble_runs(run_dirs: list[Path]) -> dict[str, Any]:
    """Cross-validated metrics of the probability average of several runs made on the same folds
    (same data and ``--split-seed``, other models or training seeds)."""
    loaded = [read_oof(Path(d)) for d in run_dirs]
    ids, y, folds, _ = loaded[0]
    for other_ids, _, other_folds, _ in loaded[1:]:
        if other_ids != ids or not np.array_equal(other_folds, folds):
            raise ValueError("runs differ in cells or folds: use the same data and --split-seed")
    probs = np.mean([p for *_, p in loaded], axis=0)
    per_fold = [classification_metrics(y[folds == k], probs[folds == k].argmax(1))
                for k in sorted(set(folds.tolist()))]
    members = [classification_metrics(y, p.argmax(1))["mca"] for *_, p in loaded]
    out = {"runs": [str(d) for d in run_dirs], "member_pooled_mca": members, "n_cells": len(ids),
           "cv_mean": summarize_folds(per_fold), "pooled": classification_metrics(y, probs.argmax(1)),
           "fold_metrics": per_fold}
    groups = oof_groups(Path(run_dirs[0]))
    if all(groups):
        out["specimen"] = specimen_metrics(y, probs, np.array(groups))
    return out


def oof_groups(run_dir: Path) -> list[str]:
    return [r["group"] for r in _oof_rows(run_dir)]
