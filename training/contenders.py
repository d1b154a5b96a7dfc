"""One contender of a service training run, CNN alone or fused, cross-validated on the run's folds, then
fitted on all cells.

* ``family="cnn"``: the one CV loop (:func:`training.crossval.cross_validate`); each fold's metrics are
  reported as it finishes.
* ``family="fused"``: the same CNN CV, then the texture model (:func:`training.texture.cross_validate_texture`,
  descriptors of the same crops and masks) on exactly the same folds, then the fusion
  (:func:`training.fusion.fuse_oof`): the weights scoring test fold k are chosen on the other folds'
  out-of-fold predictions only; the metrics and out-of-fold probabilities are the fused ones; the final weights
  are chosen on all out-of-fold predictions. Fold metrics are reported once the fusion is done.

Progress is counted in fits (a CNN fit: 1, spread over its epochs; a texture fold or final fit:
:data:`TEXTURE_FIT`); a cancellation request is honoured at the next epoch or texture fold.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from analysis.descriptors import Crop, DescriptorSpec, extract
from analysis.models.classifier import save_checkpoint
from db.models import TrainingRun
from db.session import session_scope
from hep2.jsonio import write_json
from training.crossval import cross_validate, inner_split
from training.cv import grouped_kfold
from training.datasets import CellTable
from training.fusion import fuse_oof, write_fused_model
from training.metrics import CLASS_NAMES
from training.recipe import CellRecipe
from training.texture import SHIPPED_DESCRIPTOR, cross_validate_texture, spec_hash, train_final
from training.trainer import JsonlLogger, fit

TEXTURE_FIT = 0.1
"""A texture fit's share of a CNN fit in the progress (I3A, 2 CPU cores: ~50 s per texture fold vs ~15 min
per CNN fold of the shipped recipe, docs/benchmarks.md)."""

FoldReport = Callable[[int, dict[str, Any]], None]


class RunCancelled(Exception):
    """Ops asked to cancel the run."""


class RunProgress:
    """A run's progress (fits done of ``total``) on its row; raises :class:`RunCancelled` when asked to stop."""

    def __init__(self, run_id: int, total: float) -> None:
        self.run_id, self.total = run_id, total

    def report(self, done: float, fold: int | str, epoch: int | None = None) -> None:
        with session_scope() as session:
            run = session.get(TrainingRun, self.run_id)
            assert run is not None
            run.current_fold = fold if isinstance(fold, int) else None
            run.current_epoch = epoch
            run.progress_pct = round(min(99.0, 100.0 * done / self.total), 1)
            if run.cancel_requested:
                at = f"fold {fold}" + (f", epoch {epoch}" if epoch is not None else " (texture model)")
                raise RunCancelled(f"run {self.run_id} cancelled at {at}")


class ProgressLog(JsonlLogger):
    """The trainer's log of one CNN fit: reports each epoch to :class:`RunProgress`."""

    def __init__(self, progress: RunProgress, start: float, epochs: int, fold: int | str) -> None:
        super().__init__(None, fold=fold)
        self.progress, self.start, self.epochs, self.fold = progress, start, epochs, fold

    def log(self, event: str, **fields: Any) -> None:
        super().log(event, **fields)
        if event == "epoch":  # the trainer counts epochs from 1
            epoch = int(fields.get("epoch", 1))
            self.progress.report(self.start + epoch / self.epochs, self.fold, epoch)


def cv_fits(p: CellRecipe, n_folds: int) -> float:
    return n_folds * (1 + (TEXTURE_FIT if p.family == "fused" else 0))


def final_fits(p: CellRecipe) -> float:
    return 1 + (TEXTURE_FIT if p.family == "fused" else 0)


@dataclass
class RunData:
    """What every contender of a run shares: the snapshot, its grouped folds and inputs computed once."""

    table: CellTable
    data_hash: str
    folds: list[tuple[np.ndarray, np.ndarray]]
    split_seed: int
    image_cache: dict[tuple[int, bool], np.ndarray] = field(default_factory=dict)
    descriptor_cache: dict[str, np.ndarray] = field(default_factory=dict)
    texture_cache: dict[str, tuple[np.ndarray, list[dict[str, Any]]]] = field(default_factory=dict)

    @classmethod
    def of(cls, table: CellTable, data_hash: str, n_folds: int, split_seed: int) -> RunData:
        return cls(table, data_hash, grouped_kfold(table.labels, table.groups, n_folds, split_seed), split_seed)

    @property
    def fold_of(self) -> np.ndarray:
        """Each cell's test fold."""
        out = np.full(len(self.table), -1)
        for k, (_, test) in enumerate(self.folds):
            out[test] = k
        return out

    def test_groups(self, k: int) -> list[str]:
        return sorted(set(self.table.groups[self.folds[k][1]].tolist()))

    @property
    def signature(self) -> str:
        """Hash of the folds' test groups: two CVs compare only when it is equal."""
        return hashlib.sha256(json.dumps([self.test_groups(k) for k in range(len(self.folds))]).encode()).hexdigest()

    def images(self, p: CellRecipe) -> np.ndarray:
        key = (p.img_size, p.use_mask)
        if key not in self.image_cache:
            self.image_cache[key] = self.table.load(p.img_size, p.use_mask)
        return self.image_cache[key]

    @cached_property
    def crops(self) -> list[Crop]:
        """Every cell's crop and mask (the crops the CNN is trained on), read from storage once per run."""
        return self.table.read_crops()

    def descriptors(self, spec: DescriptorSpec) -> np.ndarray:
        """The texture descriptors of every cell's crop and mask."""
        key = spec_hash(spec)
        if key not in self.descriptor_cache:
            self.descriptor_cache[key] = extract(self.crops, spec)
        return self.descriptor_cache[key]


@dataclass
class ContenderCV:
    fold_metrics: list[dict[str, Any]]
    """Test-fold metrics of the probabilities the contender ships (fused: nested)."""
    oof: np.ndarray
    fusion: dict[str, Any] | None = None
    """:func:`training.fusion.fuse_oof` of a fused contender (members' scores, final weights)."""


def texture_spec(p: CellRecipe) -> DescriptorSpec:
    return DescriptorSpec.from_dict(p.texture_descriptor or SHIPPED_DESCRIPTOR)


def cross_validate_contender(p: CellRecipe, data: RunData, progress: RunProgress, start: float,
                             report: FoldReport | None = None) -> ContenderCV:
    """Grouped CV of ``p`` on the run's folds; ``report(k, metrics)`` as fold k's final metrics are known."""
    y, groups = data.table.labels, data.table.groups
    oof = np.zeros((len(y), len(CLASS_NAMES)), np.float32)
    cnn_metrics: list[dict[str, Any]] = []
    for outcome in cross_validate(data.images(p), y, groups, [(tr, None, te) for tr, te in data.folds],
                                  p.model_config(), p.train_config(), p.tta, p.val_fraction, data.split_seed,
                                  lambda k: ProgressLog(progress, start + k, p.epochs, k)):
        oof[outcome.test] = outcome.probs
        cnn_metrics.append(outcome.metrics)
        if report and p.family == "cnn":
            report(outcome.fold, outcome.metrics)
    if p.family == "cnn":
        return ContenderCV(cnn_metrics, oof)
    texture, texture_folds = _texture_cv(p, data, progress, start + len(data.folds))
    fusion = fuse_oof(oof, texture, y, groups, data.fold_of)
    nested = fusion["nested"]
    for k, metrics in enumerate(nested["fold_metrics"]):
        metrics["members"] = {"cnn": {"mca": cnn_metrics[k]["mca"], "accuracy": cnn_metrics[k]["accuracy"]},
                              "texture": texture_folds[k]}
        metrics["cnn_weights"] = nested["cnn_weights_per_fold"][k]
        if report:
            report(k, metrics)
    return ContenderCV(nested["fold_metrics"], nested["fused_oof"], fusion)


def _texture_cv(p: CellRecipe, data: RunData, progress: RunProgress,
                start: float) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Out-of-fold texture probabilities on the run's folds and each fold's scores (shared by contenders with
    the same texture settings)."""
    spec = texture_spec(p)
    key = json.dumps([spec_hash(spec), p.texture_params, p.seed, p.texture_field_copies], sort_keys=True)
    if key in data.texture_cache:
        return data.texture_cache[key]
    progress.report(start, 0)  # descriptors first: a cancellation stops here
    oof = np.zeros((len(data.table), len(CLASS_NAMES)), np.float32)

    def on_fold(k: int, test: np.ndarray, probs: np.ndarray) -> None:
        if not np.array_equal(np.sort(test), np.sort(data.folds[k][1])):
            raise RuntimeError(f"the texture model's fold {k} differs from the run's folds")
        oof[test] = probs
        progress.report(start + (k + 1) * TEXTURE_FIT, k)

    with tempfile.TemporaryDirectory() as tmp:
        summary = cross_validate_texture(data.table, spec, p.texture_params, tmp, seed=p.seed,
                                         n_splits=len(data.folds), split_seed=data.split_seed,
                                         x=data.descriptors(spec), data_hash=data.data_hash, on_fold=on_fold,
                                         field_copies=p.texture_field_copies, crops=data.crops)
    folds = [{k: info[k] for k in ("mca", "accuracy", "recall")} for info in summary["fold_info"]]
    data.texture_cache[key] = (oof, folds)
    return oof, folds


def final_fit(p: CellRecipe, data: RunData, progress: RunProgress, start: float, folder: Path,
              fusion: dict[str, Any] | None, card: dict[str, Any]) -> Path:
    """Fit ``p`` on every cell; the file to publish in ``folder``: the CNN checkpoint, or the fused model's
    JSON (:func:`training.fusion.write_fused_model`, ``card`` merged into it) with its members beside it."""
    y, groups = data.table.labels, data.table.groups
    x = data.images(p)
    inner_train, val = inner_split(np.arange(len(y)), y, groups, p.val_fraction, data.split_seed)
    final = fit(x[inner_train], y[inner_train], p.model_config(), p.train_config(), x[val], y[val],
                ProgressLog(progress, start, p.epochs, "final"))
    cnn = save_checkpoint(final.model, p.model_config(), folder / "cnn" / "model.safetensors", half=True,
                          extra={"tta": p.tta})
    if p.family == "cnn":
        return cnn
    assert fusion is not None, "a fused contender's final fit needs its cross-validated fusion"
    write_json(cnn.with_suffix(".json"), {"tta": p.tta, "arch": p.arch, "img_size": p.img_size,
                                          "data_hash": data.data_hash})  # the CNN member's card
    spec = texture_spec(p)
    train_final(data.table, spec, p.texture_params, folder / "texture" / "texture", seed=p.seed,
                x=data.descriptors(spec), field_copies=p.texture_field_copies, data_hash=data.data_hash,
                crops=data.crops)
    progress.report(start + final_fits(p), "final")
    return write_fused_model(fusion, cnn, folder / "texture" / "texture.json", folder / "model.json", card)
