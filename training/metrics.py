"""Classification metrics: mean class accuracy (MCA, the I3A contest metric), accuracy, macro P/R/F1,
per-class recall and the confusion matrix (JSON-ready dict and PNG).

Classes absent from ``y_true`` (a grouped test fold may hold no Golgi specimen) are left out of MCA and
the macro averages, and their recall is ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from hep2.vocabulary import CELL_PATTERNS

CLASS_NAMES: tuple[str, ...] = tuple(p.value for p in CELL_PATTERNS)


def mean_class_accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Mean over the classes present in ``y_true`` of their recall (= balanced accuracy)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int]) -> dict[str, Any]:
    """All metrics of one evaluation as a JSON-serialisable dict."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(len(CLASS_NAMES)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(axis=1)
    present = [c for c in labels if support[c] > 0]
    prec, rec, _, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average="macro",
                                                    zero_division=0)
    per_class = {
        name: {"recall": float(rec[c]) if support[c] else None, "precision": float(prec[c]),
               "support": int(support[c])}
        for c, name in enumerate(CLASS_NAMES)
    }
    return {
        "n": len(y_true),
        "mca": float(np.mean([rec[c] for c in present])) if present else float("nan"),
        "accuracy": float(accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        "macro_precision": float(mp), "macro_recall": float(mr), "macro_f1": float(mf),
        "per_class": per_class,
        "confusion": {"labels": list(CLASS_NAMES), "rows": "true", "cols": "predicted",
                      "matrix": cm.tolist()},
    }


def summarize_folds(fold_metrics: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over folds of the scalar metrics and of each class's recall."""
    out: dict[str, Any] = {}
    for key in ("mca", "accuracy", "macro_precision", "macro_recall", "macro_f1"):
        vals = np.array([m[key] for m in fold_metrics], dtype=float)
        out[key] = {"mean": float(vals.mean()), "std": float(vals.std()), "folds": vals.tolist()}
    for name in CLASS_NAMES:
        vals = [m["per_class"][name]["recall"] for m in fold_metrics]
        known = np.array([v for v in vals if v is not None], dtype=float)
        out[f"recall_{name}"] = {"mean": float(known.mean()) if len(known) else None, "folds": vals}
    return out


def save_confusion_png(metrics: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix with counts, as a PNG."""
    import matplotlib  # plotting only: kept off every other import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend

    cm = np.asarray(metrics["confusion"]["matrix"], dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES, rotation=35, ha="right")
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in ticks:
        for j in ticks:
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title(title or f"MCA {metrics['mca']:.3f}, accuracy {metrics['accuracy']:.3f}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
