"""Specimen-level accuracy of a cell classifier, the way the pipeline calls a specimen
(:func:`analysis.specimen.rank_patterns`): the mean of its cells' probability vectors, top pattern = argmax.

A group's true pattern is the majority label of its cells (I3A specimen groups are pure).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from analysis.specimen import rank_patterns
from training.metrics import CLASS_NAMES


def specimen_metrics(y_true: Sequence[int], probs: np.ndarray, groups: Sequence[str]) -> dict[str, Any]:
    """``{"accuracy", "mca", "n", "per_class", "wrong": [{"group", "true", "pred", "second", "p_top",
    "p_second"}...]}``; ``mca`` is the mean over the true classes present of their specimen accuracy."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    g = np.asarray(groups)
    if not (len(y) == len(p) == len(g)):
        raise ValueError(f"lengths differ: {len(y)} labels, {len(p)} probability rows, {len(g)} groups")
    truths, correct, wrong = [], [], []
    for group in sorted(set(g.tolist())):
        sel = g == group
        true = int(np.bincount(y[sel], minlength=p.shape[1]).argmax())
        mean, order = rank_patterns(p[sel])
        truths.append(true)
        correct.append(int(order[0]) == true)
        if int(order[0]) != true:
            wrong.append({"group": str(group), "true": CLASS_NAMES[true], "pred": CLASS_NAMES[int(order[0])],
                          "second": CLASS_NAMES[int(order[1])], "p_top": round(float(mean[order[0]]), 4),
                          "p_second": round(float(mean[order[1]]), 4), "n_cells": int(sel.sum())})
    t, c = np.array(truths), np.array(correct)
    per_class = {CLASS_NAMES[k]: {"n": int((t == k).sum()), "correct": int(c[t == k].sum())}
                 for k in range(p.shape[1]) if (t == k).any()}
    return {"accuracy": float(c.mean()) if len(c) else float("nan"),
            "mca": float(np.mean([v["correct"] / v["n"] for v in per_class.values()])) if per_class else float("nan"),
            "n": len(c), "correct": int(c.sum()), "per_class": per_class, "wrong": wrong}
