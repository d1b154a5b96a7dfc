from __future__ import annotations

import json

import numpy as np
from PIL import Image

from training.metrics import CLASS_NAMES, classification_metrics, save_confusion_png, summarize_folds


def test_metrics_of_a_known_confusion(tmp_path) -> None:
    # class 0: 8/10 right (2 → class 1); class 1: 5/5; class 2: 1/4 (3 → class 0); classes 3-5 absent
    y_true = [0] * 10 + [1] * 5 + [2] * 4
    y_pred = [0] * 8 + [1] * 2 + [1] * 5 + [2] + [0] * 3
    m = classification_metrics(y_true, y_pred)
    assert np.isclose(m["mca"], (0.8 + 1.0 + 0.25) / 3)
    assert np.isclose(m["accuracy"], 14 / 19)
    assert m["per_class"][CLASS_NAMES[2]]["recall"] == 0.25
    assert m["per_class"][CLASS_NAMES[5]]["recall"] is None and m["per_class"][CLASS_NAMES[5]]["support"] == 0
    precision = [8 / 11, 5 / 7, 1.0]
    assert np.isclose(m["macro_precision"], np.mean(precision))
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, [0.8, 1.0, 0.25], strict=True)]
    assert np.isclose(m["macro_f1"], np.mean(f1))
    assert m["confusion"]["matrix"][0][:3] == [8, 2, 0] and m["confusion"]["matrix"][2][:3] == [3, 0, 1]
    json.dumps(m)  # JSON-serialisable
    png = save_confusion_png(m, tmp_path / "cm.png")
    assert Image.open(png).size[0] > 100


def test_summarize_folds_means_and_missing_classes() -> None:
    a = classification_metrics([0, 0, 5, 5], [0, 1, 5, 5])
    b = classification_metrics([0, 1], [0, 1])
    s = summarize_folds([a, b])
    assert np.isclose(s["mca"]["mean"], ((0.5 + 1) / 2 + 1) / 2)
    assert s[f"recall_{CLASS_NAMES[5]}"]["folds"] == [1.0, None]
    assert s[f"recall_{CLASS_NAMES[5]}"]["mean"] == 1.0
