"""Training throughput of the cell classifier by numeric precision and memory format (``hep2 bench --only
train-precision``): cells/s of :func:`training.trainer.fit` itself (augmentation, forward, backward,
optimiser step), each variant timed in turn and repeated, so that a noisy shared machine affects all alike.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np

from analysis.device import hardware
from training.recipe import RECIPE, CellRecipe
from training.trainer import JsonlLogger, fit

VARIANTS: tuple[tuple[str, bool], ...] = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))
"""(precision, channels_last) pairs measured."""


def training_throughput(x: np.ndarray, y: np.ndarray, recipe: CellRecipe = RECIPE, steps: int = 20,
                        repeats: int = 3, device: str = "auto") -> dict[str, Any]:
    """cells/s per variant (median of ``repeats`` rounds of ``steps`` optimiser steps each), and the speed-up
    of each over fp32."""
    model_cfg = recipe.model_config()
    rounds: dict[str, list[float]] = {}
    for _ in range(repeats):
        for precision, nhwc in VARIANTS:
            cfg = recipe.train_config(epochs=1, max_steps=steps, precision=precision, channels_last=nhwc,
                                      progress=False, device=device)
            result = fit(x, y, model_cfg, cfg, log=JsonlLogger(None))
            cells = result.history[0]["steps"] * recipe.batch_size
            rounds.setdefault(_name(precision, nhwc), []).append(cells / result.history[0]["seconds"])
    rates = {name: round(statistics.median(r), 1) for name, r in rounds.items()}
    base = rates[_name("fp32", False)]
    return {"recipe": {"arch": recipe.arch, "img_size": recipe.img_size, "batch_size": recipe.batch_size},
            "steps": steps, "repeats": repeats, "cells_per_s": rates,
            "cells_per_s_rounds": {k: [round(v, 1) for v in r] for k, r in rounds.items()},
            "speedup_vs_fp32": {k: round(v / base, 3) for k, v in rates.items()}, "hardware": hardware()}


def _name(precision: str, channels_last: bool) -> str:
    return f"{precision}{'+channels_last' if channels_last else ''}"
