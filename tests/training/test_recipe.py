"""The one training recipe: `hep2 train cells` and the service's retraining take their defaults from it."""

from __future__ import annotations

import inspect

from cli.training import train_cells
from training.recipe import RECIPE
from training.retrain import RunParameters


def test_cli_and_retraining_defaults_come_from_the_recipe() -> None:
    cli = {name: p.default for name, p in inspect.signature(train_cells).parameters.items()}
    assert (cli["model"], cli["img_size"], cli["epochs"], cli["field_aug"], cli["patience"], cli["tta"]) == (
        RECIPE.arch, RECIPE.img_size, RECIPE.epochs, RECIPE.field_aug, RECIPE.patience, RECIPE.tta)
    service = RunParameters()
    assert {k: getattr(service, k) for k in RECIPE.field_names()} == RECIPE.to_dict()
    assert service.train_config().patience == RECIPE.patience
    assert service.train_config(epochs=1, max_steps=3).epochs == 1


def test_run_parameters_refuse_unknown_fields_and_accept_every_recipe_field() -> None:
    import pytest

    with pytest.raises(ValueError, match="unknown"):
        RunParameters.from_dict({"epochz": 3})
    assert RunParameters.from_dict({"img_size": 64, "precision": "bf16"}).model_config().img_size == 64


def test_service_runs_train_the_family_the_product_ships() -> None:
    """Retraining produces what the pipeline runs by default: the fused family while the shipped fused model is
    promoted, else the CNN alone (docs/operations.md)."""
    from analysis.models.fused import fused_promoted

    assert (RECIPE.family == "fused") == fused_promoted()
