"""Compiled geodesic operations for the segmenters' watershed (numba): grey reconstruction and level flooding.

Both work on 2-D arrays in place, inside the components of a label image: a pixel sees its 8 neighbours only
when they lie in its own component (0: in none), so every component is processed as if it were alone (two
4-connected components may still touch diagonally). They are the queue-based forms of the definitions in
their docstrings and give exactly those results (only comparisons and copies of the input values: no
rounding). numba compiles them on first use and caches the machine code beside this file (or in
``NUMBA_CACHE_DIR``): ~3 s once per installation, ~0.3 s per later process.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_DY = np.array([-1, -1, -1, 0, 0, 1, 1, 1])
_DX = np.array([-1, 0, 1, -1, 1, -1, 0, 1])
"""The 8 neighbours in raster order: the first 4 come before the pixel in a raster scan, the last 4 after."""


@njit(inline="always")
def _neighbour_max(values: np.ndarray, components: np.ndarray, y: int, x: int, first: int, last: int,
                   start: float) -> float:
    """The max of ``start`` and ``values`` at the neighbours ``first..last - 1`` (:data:`_DY`/:data:`_DX`
    order) of ``(y, x)`` that lie in the image and in its component."""
    rows, width = values.shape
    comp, best = components[y, x], start
    for k in range(first, last):
        ny, nx = y + _DY[k], x + _DX[k]
        if 0 <= ny < rows and 0 <= nx < width and components[ny, nx] == comp and values[ny, nx] > best:
            best = values[ny, nx]
    return best


@njit(cache=True, nogil=True)
def reconstruct_in_place(current: np.ndarray, image: np.ndarray, components: np.ndarray) -> None:
    """Grey-level reconstruction by dilation of ``current`` (≤ ``image`` everywhere) under ``image``, in place:
    the fixed point of ``current = min(3×3 max of current over the pixel's component, image)``. Pixels with
    component 0 are left as they are.

    Vincent's hybrid algorithm (IEEE TIP 1993): a forward and a backward raster scan, then a FIFO queue of the
    pixels that can still raise a neighbour.
    """
    height, width = current.shape
    for y in range(height):  # forward scan: the neighbours before the pixel
        for x in range(width):
            if components[y, x] != 0:
                current[y, x] = min(_neighbour_max(current, components, y, x, 0, 4, current[y, x]), image[y, x])
    queue = np.empty(height * width, np.int64)  # a ring: each pixel is queued at most once at a time
    queued = np.zeros((height, width), np.bool_)
    head, size = 0, 0
    for y in range(height - 1, -1, -1):  # backward scan: the neighbours after the pixel
        for x in range(width - 1, -1, -1):
            comp = components[y, x]
            if comp == 0:
                continue
            value = min(_neighbour_max(current, components, y, x, 4, 8, current[y, x]), image[y, x])
            current[y, x] = value
            for k in range(4, 8):
                ny, nx = y + _DY[k], x + _DX[k]
                if (0 <= ny < height and 0 <= nx < width and components[ny, nx] == comp
                        and current[ny, nx] < value and current[ny, nx] < image[ny, nx]):
                    queue[(head + size) % queue.size] = y * width + x
                    size += 1
                    queued[y, x] = True
                    break
    while size:
        y, x = divmod(queue[head], width)
        head, size = (head + 1) % queue.size, size - 1
        queued[y, x] = False
        comp, value = components[y, x], current[y, x]
        for k in range(8):
            ny, nx = y + _DY[k], x + _DX[k]
            if (0 <= ny < height and 0 <= nx < width and components[ny, nx] == comp
                    and current[ny, nx] < value and current[ny, nx] < image[ny, nx]):
                current[ny, nx] = min(value, image[ny, nx])
                if not queued[ny, nx]:
                    queue[(head + size) % queue.size] = ny * width + nx
                    size += 1
                    queued[ny, nx] = True


@njit(cache=True, nogil=True)
def _pixels_by_level(height: np.ndarray, components: np.ndarray, flooded: np.ndarray,
                     thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flat indices of the pixels of the ``flooded`` components grouped by the first level at which they
    are allowed (``height >= thresholds[level]``; raster order within a level), and where each group
    starts: level ``k``'s pixels are ``by_level[per_level[k]:per_level[k + 1]]`` (a counting sort)."""
    rows, width = height.shape
    levels = thresholds.size
    first = np.full(rows * width, levels, np.int16)
    per_level = np.zeros(levels + 2, np.int64)
    for y in range(rows):
        for x in range(width):
            if flooded[components[y, x]]:
                level, value = 0, np.float64(height[y, x])
                while level < levels and thresholds[level] > value:
                    level += 1
                first[y * width + x] = level
                per_level[level + 1] += 1
    for level in range(levels + 1):
        per_level[level + 1] += per_level[level]
    by_level = np.empty(per_level[levels + 1], np.int32)
    filled = per_level.copy()
    comp_flat = components.reshape(-1)
    for p in range(rows * width):
        if flooded[comp_flat[p]]:
            by_level[filled[first[p]]] = p
            filled[first[p]] += 1
    return by_level, per_level


@njit(cache=True, nogil=True)
def flood_levels_in_place(labels: np.ndarray, height: np.ndarray, components: np.ndarray, flooded: np.ndarray,
                          thresholds: np.ndarray, max_steps: int) -> int:
    """Level-wise geodesic growth of ``labels`` (0: unlabelled) inside the components ``c`` with
    ``flooded[c]``, in place; returns the number of their pixels left unlabelled.

    For each threshold (descending): ``allowed = flooded component & (height >= threshold)``; repeat at most
    ``max_steps`` times: every unlabelled allowed pixel with a labelled neighbour (same component) takes the
    largest neighbouring label, all pixels of a step at once (synchronously), until a step adds none. A pixel
    can only be reached in a step if a neighbour was labelled in the step before, so each step looks at the
    neighbours of the previous step's new pixels only (at a level's start: its newly allowed pixels).
    """
    rows, width = labels.shape
    levels = thresholds.size
    by_level, per_level = _pixels_by_level(height, components, flooded, thresholds)
    allowed = np.zeros(rows * width, np.bool_)
    seen_in_step = np.full(rows * width, -1, np.int32)
    candidates = np.empty(by_level.size, np.int32)  # each allowed pixel at most once per step
    new, new_labels = np.empty(by_level.size, np.int32), np.empty(by_level.size, labels.dtype)
    flat, step_id, stopped_early = labels.reshape(-1), 0, False
    for level in range(levels):
        for i in range(per_level[level], per_level[level + 1]):
            allowed[by_level[i]] = True
        # after a level that ran to stability only newly allowed pixels can have a labelled neighbour;
        # after one stopped at max_steps every unlabelled allowed pixel can
        count = 0
        for i in range(0 if stopped_early else per_level[level], per_level[level + 1]):
            if flat[by_level[i]] == 0:
                candidates[count] = by_level[i]
                count += 1
        steps = 0
        while count and steps < max_steps:
            grown = 0
            for i in range(count):
                y, x = divmod(candidates[i], width)
                best = _neighbour_max(labels, components, y, x, 0, 8, 0)
                if best > 0:
                    new[grown], new_labels[grown] = candidates[i], best
                    grown += 1
            if grown == 0:
                break
            for i in range(grown):
                flat[new[i]] = new_labels[i]
            steps += 1
            step_id += 1
            count = 0
            for i in range(grown):
                y, x = divmod(new[i], width)
                for k in range(8):
                    ny, nx = y + _DY[k], x + _DX[k]
                    q = ny * width + nx
                    if (0 <= ny < rows and 0 <= nx < width and allowed[q] and flat[q] == 0
                            and seen_in_step[q] != step_id):
                        seen_in_step[q] = step_id
                        candidates[count] = q
                        count += 1
        stopped_early = steps >= max_steps
    unlabelled = 0
    for i in range(by_level.size):
        if flat[by_level[i]] == 0:
            unlabelled += 1
    return unlabelled


MAX_FLOOD_STEPS = 500
"""Growth steps per level at most in the segmenter's flood (a level that needs more stops there; its unreached
pixels go on at the next level, and after the last they form instances of their own)."""


def compile_kernels() -> None:
    """Compile (or load from numba's cache) both kernels for the types the segmenters use: float32 images,
    int32 labels. ``infra/Dockerfile`` runs it at build time so that workers start with the machine code."""
    image, components = np.zeros((3, 3), np.float32), np.ones((3, 3), np.int32)
    reconstruct_in_place(image.copy(), image, components)
    flood_levels_in_place(np.zeros((3, 3), np.int32), image, components, np.ones(2, np.bool_),
                          np.linspace(1.0, 0.0, 17)[1:], MAX_FLOOD_STEPS)
