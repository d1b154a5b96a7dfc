"""Evaluate segmenters on the uobcs-edges format: ``<name>.png`` + ``<name>_edges.png`` (255 = edge pixel).

Ground truth from hand-drawn outlines (:func:`edges_to_instances`):

1. edge pixels = ``edges > 127``; they are dilated by ``gap`` px (default 1, a 3×3 cross), which closes gaps
   of up to ~2 px in an outline (open outlines with wider gaps merge with the background and are lost;
   :func:`edges_to_instances` counts nothing for them);
2. the non-edge pixels are split into 4-connected regions; the *largest* region is the background. The
   image border closes outlines that run into it: a nucleus cut by the border is the region between its
   outline and the border, like any other enclosed region;
3. regions smaller than ``min_area`` px (default 15: holes inside thick or doubled strokes) are dropped;
4. each remaining region grows back into the (dilated) edge pixels within ``gap + 1`` px, nearest region
   first, so the drawn outline belongs to its nucleus (outlines shared by touching nuclei are split between
   them).

No parameter of the segmenters or of this conversion was tuned on these images: they are the test set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from training.segmentation.metrics import score, total
from workers.pipeline.decode import ImageLimits, decode_image
from workers.pipeline.types import Segmenter


def edges_to_instances(edges: np.ndarray, gap: int = 1, min_area: int = 15) -> np.ndarray:
    """Hand-drawn outlines (non-zero = edge) → int32 instance labels (see the module docstring)."""
    edge = np.asarray(edges) > 127
    if edge.ndim == 3:
        edge = edge.any(axis=-1)
    thick = ndimage.binary_dilation(edge, iterations=gap) if gap else edge
    regions, n = ndimage.label(~thick)
    if n == 0:
        return np.zeros(edge.shape, np.int32)
    areas = np.bincount(regions.ravel())
    areas[0] = 0
    keep = areas >= min_area
    keep[0] = False
    keep[int(np.argmax(areas))] = False  # the background
    ids = np.flatnonzero(keep)
    lut = np.zeros(n + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    interiors = lut[regions]
    dist, (iy, ix) = ndimage.distance_transform_edt(interiors == 0, return_indices=True)
    grow = (thick | edge) & (dist <= gap + 1)
    return np.where(grow, interiors[iy, ix], interiors).astype(np.int32)


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


def evaluate(data: str | Path, segmenters: dict[str, Segmenter]) -> dict[str, Any]:
    """Per image and pooled Dice / IoU / object F1 (IoU ≥ 0.5, Hungarian) of each segmenter."""
    pairs = find_pairs(Path(data))
    truths = {name: edges_to_instances(np.asarray(Image.open(edges))) for name, _, edges in pairs}
    limits = ImageLimits(accept_16bit=True)  # annotated evaluation fields of any bit depth
    fields = {name: decode_image(image.read_bytes(), limits) for name, image, _ in pairs}
    result: dict[str, Any] = {"data": str(data), "images": {n: {"true_objects": int(t.max())}
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
