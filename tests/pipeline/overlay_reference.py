"""The overlay renderer as it was before the overlay layer (2026-12-01, main d9cf001): one pass drawing the field,
the outlines, the "M" labels and the legend. The reference that ``compose_overlay(field, render_layer(...))``
must reproduce pixel for pixel (test_overlay_layer.py). Its single-pass drawing is kept verbatim; the
colours, outlines, legend and PNG encoder are the product's own (``analysis.overlay``), which the split into
layer + compose did not change, so that a change of those does not need a second copy here."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from analysis.cells import Cell
from analysis.overlay import (
    ANNOTATION,
    COLOURS,
    DISPLAY_GAIN,
    EXCLUDED,
    MITOTIC,
    _legend,
    _outlines,
    encode_png,
)
from analysis.types import FieldImage


def render_overlay(field: FieldImage, labels: np.ndarray, cells: list[Cell], title: str = "",
                   max_side: int = 1600, index: float | None = None, intensity_class: str | None = None) -> bytes:
    """PNG bytes of the overlay on a fixed scale (downscaled so the longer side is at most ``max_side``);
    ``index``/``intensity_class``: the measured fluorescence index, printed in the legend."""
    grey = np.clip(field.signal * DISPLAY_GAIN, 0, 1) * 255  # float32; uint8 by truncation, as always
    rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    ann = field.annotation_mask
    rgb[ann] = (0.5 * grey[ann][:, None] + 0.5 * np.array(ANNOTATION)).astype(np.float32).astype(np.uint8)
    lut = np.zeros((int(labels.max()) + 1, 3), np.uint8)
    counts = dict.fromkeys(COLOURS, 0)
    mitotic = 0
    for c in cells:
        if c.label >= len(lut):
            continue
        if c.mitotic:
            lut[c.label], mitotic = MITOTIC, mitotic + 1
        elif c.excluded is not None or c.pattern is None:
            lut[c.label] = EXCLUDED
        else:
            lut[c.label] = COLOURS[c.pattern]
            counts[c.pattern] += 1
    edge = _outlines(labels)
    thick = edge.copy()
    thick[1:] |= edge[:-1]
    thick[:, 1:] |= edge[:, :-1]
    thick &= labels > 0
    rgb[thick] = lut[labels[thick]]
    image = Image.fromarray(rgb)
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for c in cells:
        if c.mitotic:
            draw.text((c.bbox[3] * scale + 2, c.bbox[0] * scale - 4), "M", fill=MITOTIC, font=font)
    scale_note = f"fixed scale 0-{2 ** field.bit_depth - 1}" + (f" x{DISPLAY_GAIN:g}" if DISPLAY_GAIN != 1 else "")
    measured = f"index {index:.1f}" + (f" ({intensity_class})" if intensity_class else "") if index is not None else ""
    _legend(draw, image.size, counts, mitotic, title, font, [scale_note, measured])
    return encode_png(np.asarray(image))
