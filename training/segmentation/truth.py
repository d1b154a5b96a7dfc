"""Nucleus instances from hand-drawn outlines (the uobcs-edges format: ``<name>_edges.png``, 255 = edge pixel).

:func:`edges_to_instances` runs two steps, each usable alone:

1. :func:`enclosed_regions`, every region the strokes enclose:

   a. edge pixels = ``edges > 127``, dilated by ``gap`` px (default 1, a 3×3 cross), which closes gaps of up
      to ~2 px in an outline (open outlines with wider gaps merge with the background and are lost);
   b. the non-edge pixels are split into 4-connected regions; the *largest* region is the background. The
      image border closes outlines that run into it: a nucleus cut by the border is the region between its
      outline and the border, like any other enclosed region;
   c. regions smaller than ``min_area`` px (default 15: holes inside thick or doubled strokes) are dropped;
   d. each remaining region grows back into the (dilated) edge pixels within ``gap + 1`` px, nearest region
      first, so the drawn outline belongs to its nucleus (outlines shared by touching nuclei are split).

2. :func:`merge_fragments`, for edge maps whose strokes are not only outlines. On 9343_AM many nuclei carry
   strokes *inside* them (texture edges cross the nucleus), so step 1 cuts one nucleus into 2-6 regions,
   and dim nuclei that were not outlined carry clusters of strokes that enclose small holes. Relative to the
   typical region (area-weighted median, :func:`analysis.segmentation.typical_area`, i.e. a whole
   nucleus):

   a. a region smaller than ``fragment`` (0.5) × typical that is separated from a neighbour by one stroke
      (its pixels within ``2 * (gap + 1)`` px) is a piece of that neighbour's nucleus: the smallest such
      piece is merged first, into the neighbour it shares the longest contact with, until no piece is left
      (merged pieces may grow past the limit and stop being pieces);
   b. what is still smaller than ``min_nucleus`` (0.25) × typical is a hole between strokes, not a nucleus,
      and is dropped;
   c. regions that touch the image border are never pieces and never dropped (a nucleus cut by the border
      is small for another reason);
   d. the stroke pixels between merged pieces join the nucleus (a closing of the merged mask, restricted to
      pixels that belong to no other region).

   Known limits: a nucleus cut into two halves that are each larger than half a typical nucleus stays two
   objects; a small detached object drawn within ~4 px of a nucleus joins it. The two fractions were chosen
   before scoring any segmenter against the result and were not varied to improve a score; docs/segmentation.md
   reports both conversions and how the scores move with the fractions.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from analysis.segmentation import typical_area


def enclosed_regions(edges: np.ndarray, gap: int = 1, min_area: int = 15) -> np.ndarray:
    """Every region enclosed by the strokes (step 1 of the module docstring) → int32 labels."""
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


def _contacts(regions: np.ndarray, reach: int) -> dict[tuple[int, int], int]:
    """(i, j) → number of j's pixels within ``reach`` px (cross metric) of region i, for i != j."""
    contacts: dict[tuple[int, int], int] = {}
    height, width = regions.shape
    for i, box in enumerate(ndimage.find_objects(regions), start=1):
        if box is None:
            continue
        ys = slice(max(box[0].start - reach, 0), min(box[0].stop + reach, height))
        xs = slice(max(box[1].start - reach, 0), min(box[1].stop + reach, width))
        crop = regions[ys, xs]
        own = crop == i
        near = crop[ndimage.binary_dilation(own, iterations=reach) & ~own]
        ids, counts = np.unique(near[(near > 0) & (near != i)], return_counts=True)
        for j, count in zip(ids.tolist(), counts.tolist(), strict=True):
            contacts[(i, j)] = count
    return contacts


def merge_fragments(regions: np.ndarray, gap: int = 1, fragment: float = 0.5,
                    min_nucleus: float = 0.25) -> np.ndarray:
    """Merge pieces of nuclei cut by inner strokes, drop holes between strokes (step 2) → int32 labels."""
    n = int(regions.max())
    if n == 0:
        return regions.astype(np.int32)
    area = np.bincount(regions.ravel(), minlength=n + 1).astype(np.float64)
    area[0] = 0
    typical = typical_area(area[1:])
    border = np.zeros(n + 1, bool)
    border[np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))] = True
    border[0] = False
    contacts = _contacts(regions, reach=2 * (gap + 1))
    group = np.arange(n + 1)  # every region's group (the id of the region it was merged into)
    while True:
        pieces = [(area[group[i]], -count, group[i], group[j]) for (i, j), count in contacts.items()
                  if group[i] != group[j] and not border[group[i]] and area[group[i]] < fragment * typical]
        if not pieces:
            break
        _, _, piece, into = min(pieces)  # the smallest piece, into the neighbour it touches most
        group[group == piece] = into
        area[into] += area[piece]
        area[piece] = 0
        border[into] |= border[piece]
    merged = group[regions]
    merged[regions == 0] = 0
    out = np.zeros(regions.shape, np.int32)
    for new_id, g in enumerate(
            (g for g in np.unique(merged[merged > 0]) if border[g] or area[g] >= min_nucleus * typical), start=1):
        mask = merged == g
        if np.count_nonzero(group[1:] == g) > 1:  # pieces: the strokes between them join the nucleus
            mask |= ndimage.binary_closing(mask, iterations=gap + 1) & (regions == 0)
        out[mask & (out == 0)] = new_id
    return out


def edges_to_instances(edges: np.ndarray, gap: int = 1, min_area: int = 15, fragment: float = 0.5,
                       min_nucleus: float = 0.25) -> np.ndarray:
    """Hand-drawn outlines → int32 nucleus instances: :func:`enclosed_regions`, then :func:`merge_fragments`."""
    return merge_fragments(enclosed_regions(edges, gap, min_area), gap, fragment, min_nucleus)
