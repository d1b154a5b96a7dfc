"""Evaluate segmenters on the uobcs-edges format: ``<name>.png`` + ``<name>_edges.png`` (255 = edge pixel).

Ground truth comes from the hand-drawn outlines (:mod:`training.segmentation.truth`): ``truth="nuclei"``
(default) fills the outlines and merges pieces of nuclei cut by inner strokes; ``truth="regions"`` counts
every enclosed region as a nucleus (the conversion used up to session 3, kept for comparison).
No parameter of the segmenters was tuned on these images: they are the test set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from analysis.decode import ImageLimits, decode_image
from analysis.types import Segmenter
from training.segmentation.metrics import score, total
from training.segmentation.truth import edges_to_instances, enclosed_regions


def find_pairs(data: Path) -> list[tuple[str, Path, Path]]:
    """(name, image, edges) for every ``<name>_edges.png`` with its ``<name>.png`` in ``data``."""
    pairs = []
    for edges in sorted(data.glob("*_edges.png")):
        image = edges.with_name(edges.name[: -len("_edges.png")] + ".png")
        if image.exists():
            pairs.append((image.stem, image, edges))
    if not pairs:
        raise FileNotFoundError(f"no <name>.png + <name>_edges.png pairs in {data}")
    return pairs


TRUTHS = {"nuclei": edges_to_instances, "regions": enclosed_regions}


def evaluate(data: str | Path, segmenters: dict[str, Segmenter], truth: str = "nuclei") -> dict[str, Any]:
    """Per image and pooled Dice / IoU / object F1 (IoU ≥ 0.5, Hungarian) of each segmenter."""
    pairs = find_pairs(Path(data))
    to_instances = TRUTHS[truth]
    truths = {name: to_instances(np.asarray(Image.open(edges))) for name, _, edges in pairs}
    limits = ImageLimits(accept_16bit=True)  # annotated evaluation fields of any bit depth
    fields = {name: decode_image(image.read_bytes(), limits) for name, image, _ in pairs}
    result: dict[str, Any] = {"data": str(data), "truth": truth, "images": {n: {"true_objects": int(t.max())}
                                                            for n, t in truths.items()}, "segmenters": {}}
    for seg_name, segmenter in segmenters.items():
        per_image, scores = {}, []
        for name, field in fields.items():
            start = time.time()
            labels = segmenter.segment(field)
            s = score(truths[name], labels)
            scores.append(s)
            per_image[name] = {**s.summary(), "pred_objects": int(labels.max()),
                               "seconds": round(time.time() - start, 2)}
        result["segmenters"][seg_name] = {"per_image": per_image, "overall": total(scores).summary()}
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table: segmenter, image, Dice, IoU, object F1, precision, recall."""
    lines = [f"{'segmenter':<10} {'image':<10} {'Dice':>6} {'IoU':>6} {'F1@0.5':>7} {'prec':>6} {'recall':>6} "
             f"{'true':>5} {'pred':>5}"]
    for seg, res in result["segmenters"].items():
        rows = [*res["per_image"].items(), ("overall", res["overall"])]
        for name, m in rows:
            n_true = m["tp"] + m["fn"]
            n_pred = m["tp"] + m["fp"]
            lines.append(f"{seg:<10} {name:<10} {m['dice']:>6.3f} {m['iou']:>6.3f} {m['object_f1']:>7.3f} "
                         f"{m['object_precision']:>6.3f} {m['object_recall']:>6.3f} {n_true:>5} {n_pred:>5}")
    return "\n".join(lines)
