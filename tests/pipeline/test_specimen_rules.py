"""The specimen stage uses the out-of-vocabulary thresholds calibrated for the classifier it runs with."""

from __future__ import annotations

from types import SimpleNamespace

from analysis.analyze import specimen_rules
from analysis.config import load_config
from analysis.specimen import SpecimenConfig

CARD = {"specimen_thresholds": {"oov_min_cell_confidence": 0.35, "oov_max_entropy": 0.8,
                                "calibrated_on": "out-of-fold predictions"}}


def test_the_classifiers_calibrated_thresholds_replace_the_defaults() -> None:
    rules = specimen_rules(SpecimenConfig(), SimpleNamespace(card=CARD))
    assert rules.oov_min_cell_confidence == 0.35 and rules.oov_max_entropy == 0.8
    assert rules.min_cells == SpecimenConfig().min_cells


def test_a_labs_own_setting_wins_over_the_card(tmp_path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text("[specimen]\noov_max_entropy = 0.7\n")
    rules = specimen_rules(load_config(path).specimen, SimpleNamespace(card=CARD))
    assert rules.oov_max_entropy == 0.7 and rules.oov_min_cell_confidence == 0.35


def test_a_classifier_without_calibration_keeps_the_configured_rules() -> None:
    config = SpecimenConfig(min_cells=3)
    assert specimen_rules(config, SimpleNamespace(card={})) is config
    assert specimen_rules(config, object()) is config
