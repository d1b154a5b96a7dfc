"""The promotion policy compares specimen-level calls too (out-of-fold, as the pipeline aggregates)."""

from __future__ import annotations

from db.models import ModelStage, ModelTask, ModelVersion
from training.registry import PromotionPolicy, decide_promotion

CLASSES = ("homogeneous", "speckled", "nucleolar", "centromere", "nuclear_membrane", "golgi")


def _cv(mca: float, correct: int | None) -> dict:
    out = {"mca": mca, "recall": dict.fromkeys(CLASSES, mca), "folds_signature": "A"}
    if correct is not None:
        out["specimen"] = {"n": 62, "correct": correct}
    return out


def _versions(mine: dict, theirs: dict) -> tuple[ModelVersion, ModelVersion]:
    current = ModelVersion(task=ModelTask.CELL_PATTERN, version="v1", stage=ModelStage.PRODUCTION)
    candidate = ModelVersion(task=ModelTask.CELL_PATTERN, version="v2", stage=ModelStage.CANDIDATE,
                             metrics={"cv": mine, "champion_cv": {**theirs, "production_version": "v1"}})
    return candidate, current


def test_a_candidate_that_calls_more_specimens_wrong_is_refused_despite_a_better_mca() -> None:
    ok, reason = decide_promotion(*_versions(_cv(0.85, 56), _cv(0.80, 57)), PromotionPolicy())
    assert not ok and "56/62 specimens right vs production's 57/62" in reason


def test_specimen_loss_within_the_allowance_and_equal_calls_pass() -> None:
    ok, reason = decide_promotion(*_versions(_cv(0.85, 57), _cv(0.80, 57)), PromotionPolicy())
    assert ok and "specimens 57/62 vs 57/62" in reason
    assert decide_promotion(*_versions(_cv(0.85, 56), _cv(0.80, 57)), PromotionPolicy(max_specimen_loss=1))[0]


def test_versions_without_specimen_metrics_are_compared_on_cells_alone() -> None:
    ok, reason = decide_promotion(*_versions(_cv(0.85, None), _cv(0.80, 57)), PromotionPolicy())
    assert ok and "specimens" not in reason
