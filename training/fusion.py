"""Fusing the cell-model families: per-class weights chosen on out-of-fold predictions, evaluated nested.

Inputs are the ``oof.csv`` files of runs on the same cells and the same grouped folds (``hep2 train
cells`` for the CNN, ``training.texture.cross_validate_texture`` for the texture model). For each class c
the CNN's weight is w_c and the texture model's 1 - w_c (:func:`analysis.models.fused.fuse`); the weights
maximise cell MCA (ties: specimen calls) by coordinate ascent over a grid, starting from the best single
weight shared by all classes.

Honest evaluation (:func:`nested_fusion_cv`): the weights used on test fold k are chosen only on the
out-of-fold predictions of the other folds; the shipped weights (:func:`choose_weights` on every fold) are
never scored on the cells they were chosen on.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from analysis.device import hardware
from analysis.models.fused import FORMAT, fuse
from analysis.specimen import calibrate_oov
from hep2.jsonio import write_json
from training.card import git_commit
from training.experiment import oof_groups, read_oof
from training.metrics import CLASS_NAMES, classification_metrics, mean_class_accuracy, summarize_folds
from training.specimen_metrics import specimen_metrics

GRID = np.round(np.linspace(0.0, 1.0, 11), 2)


def _score(y: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    return mean_class_accuracy(y, probs.argmax(1)), specimen_metrics(y, probs, groups)["accuracy"]


def choose_weights(members: list[np.ndarray], y: np.ndarray, groups: np.ndarray, passes: int = 2) -> np.ndarray:
    """CNN weight per class (texture: 1 - w) maximising (cell MCA, specimen accuracy) on these predictions;
    returns ``(2, C)`` member weights."""
    def weights_of(w: np.ndarray) -> np.ndarray:
        return np.stack([w, 1.0 - w])

    def score(w: np.ndarray) -> tuple[float, float]:
        return _score(y, fuse(members, weights_of(w)), groups)

    n_classes = members[0].shape[1]
    best_w = max((np.full(n_classes, g) for g in GRID), key=score)
    best = score(best_w)
    for _ in range(passes):
        for c in range(n_classes):
            for g in GRID:
                trial = best_w.copy()
                trial[c] = g
                s = score(trial)
                if s > best:
                    best, best_w = s, trial
    return weights_of(best_w)


def nested_fusion_cv(members: list[np.ndarray], y: np.ndarray, groups: np.ndarray,
                     folds: np.ndarray) -> dict[str, Any]:
    """Grouped-CV metrics of the fusion with weights chosen on the other folds' out-of-fold predictions."""
    fused = np.zeros_like(members[0], dtype=np.float32)
    per_fold, chosen = [], {}
    for k in sorted(set(folds.tolist())):
        test, rest = folds == k, folds != k
        w = choose_weights([m[rest] for m in members], y[rest], groups[rest])
        fused[test] = fuse([m[test] for m in members], w)
        per_fold.append(classification_metrics(y[test], fused[test].argmax(1)))
        chosen[int(k)] = w[0].round(2).tolist()
    return {"protocol": "nested: fold k fused with weights chosen on the other folds' out-of-fold predictions",
            "cnn_weights_per_fold": chosen, "cv_mean": summarize_folds(per_fold),
            "pooled": classification_metrics(y, fused.argmax(1)), "specimen": specimen_metrics(y, fused, groups),
            "fold_metrics": per_fold, "fused_oof": fused}


def fuse_runs(cnn_run: Path, texture_run: Path) -> dict[str, Any]:
    """Nested CV of the fusion of two runs on the same folds, the members' own scores and the final weights."""
    ids, y, folds, cnn = read_oof(Path(cnn_run))
    t_ids, t_y, t_folds, texture = read_oof(Path(texture_run))
    if t_ids != ids or not np.array_equal(t_folds, folds) or not np.array_equal(t_y, y):
        raise ValueError("the runs differ in cells, labels or folds: use the same data and split seed")
    groups = np.array(oof_groups(Path(cnn_run)))
    return {"runs": {"cnn": str(cnn_run), "texture": str(texture_run)},
            **fuse_oof(cnn, texture, y, groups, folds)}


def fuse_oof(cnn: np.ndarray, texture: np.ndarray, y: np.ndarray, groups: np.ndarray,
             folds: np.ndarray) -> dict[str, Any]:
    """Nested CV of the fusion of the members' out-of-fold probabilities (same cells, same folds: ``folds``
    is each cell's test fold), the members' own scores and the final weights (chosen on all of them)."""
    members = [cnn, texture]
    nested = nested_fusion_cv(members, y, groups, folds)
    final = choose_weights(members, y, groups)
    member_scores = {name: {"mca": mean_class_accuracy(y, p.argmax(1)),
                            "specimen": specimen_metrics(y, p, groups)}
                     for name, p in zip(("cnn", "texture"), members, strict=True)}
    return {"n_cells": len(y), "n_groups": len(set(groups.tolist())), "members": member_scores, "nested": nested,
            "final_cnn_weights": dict(zip(CLASS_NAMES, final[0].round(2).tolist(), strict=True)),
            "final_weights": final, "groups": groups}


def write_fused_model(result: dict[str, Any], cnn_weights: Path, texture_model: Path, out: Path,
                      card: dict[str, Any]) -> Path:
    """Copy the members beside ``out`` (a ``.json``; a CNN already in that folder is referenced, not copied)
    and write the fused model file with its card.

    ``texture_model``: the texture model's ``.json`` (its ``.txt`` booster is copied with it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.stem
    cnn_dst = Path(cnn_weights)
    if cnn_dst.parent.resolve() != out.parent.resolve():  # a member already shipped beside it is referenced
        cnn_dst = out.with_name(f"{stem}-cnn.safetensors")
        shutil.copyfile(cnn_weights, cnn_dst)
        cnn_card = Path(cnn_weights).with_suffix(".json")
        if cnn_card.is_file():
            shutil.copyfile(cnn_card, cnn_dst.with_suffix(".json"))
    tex_src = Path(texture_model).with_suffix(".json")
    tex_dst = out.with_name(f"{stem}-texture.json")
    doc = json.loads(tex_src.read_text())
    booster_src = tex_src.with_name(doc["booster_file"])
    doc["booster_file"] = f"{stem}-texture.txt.gz"  # gzip: the booster's text is ~11 MB, ~4.6 MB compressed
    data = booster_src.read_bytes()
    if booster_src.suffix != ".gz":
        data = gzip.compress(data, mtime=0)
    out.with_name(doc["booster_file"]).write_bytes(data)
    doc["booster_sha256"] = hashlib.sha256(data).hexdigest()
    write_json(tex_dst, doc)
    weights = result["final_weights"]
    members = [{"family": "cnn", "file": cnn_dst.name, "class_weights": weights[0].round(4).tolist()},
               {"family": "texture", "file": tex_dst.name, "class_weights": weights[1].round(4).tolist()}]
    for m in members:
        m["sha256"] = hashlib.sha256(out.with_name(m["file"]).read_bytes()).hexdigest()
    nested = result["nested"]
    thresholds = {**calibrate_oov(nested["fused_oof"], result["groups"]),
                  "calibrated_on": f"nested out-of-fold fused predictions, {result['n_groups']} held-out specimen "
                                   "groups (specimen.calibrate_oov)"}
    provenance = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "code": git_commit(), "hardware": hardware(),
                  "data_hash": json.loads(tex_src.read_text()).get("meta", {}).get("data_hash")}
    doc = {"format": FORMAT, "classes": list(CLASS_NAMES), "members": members, **provenance,
           "cv": {k: nested[k] for k in ("protocol", "cnn_weights_per_fold", "cv_mean", "pooled", "specimen")},
           "member_cv": result["members"], "specimen_thresholds": thresholds, "promoted": False,
           "promotion_note": "not the pipeline default until whole fields are checked (hep2 evaluate fields) and "
                             "this is set to true", **card}
    return write_json(out, doc)
