"""The overlay renderer as it was before the overlay layer (verbatim, 2026-12-01, main d9cf001): the reference
that ``compose_overlay(field, render_layer(...))`` must reproduce pixel for pixel (test_overlay_layer.py)."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from analysis.cells import Cell
from analysis.types import FieldImage
from hep2.vocabulary import CELL_PATTERNS

COLOURS: dict[str, tuple[int, int, int]] = {
    "homogeneous": (255, 80, 80),
    "speckled": (80, 160, 255),
    "nucleolar": (255, 210, 0),
    "centromere": (0, 230, 120),
    "nuclear_membrane": (255, 120, 255),
    "golgi": (0, 230, 230),
}
EXCLUDED = (110, 110, 110)
MITOTIC = (255, 255, 255)
ANNOTATION = (255, 0, 255)
DISPLAY_GAIN = 1.0
"""Overlay grey level = signal (fraction of the bit depth's full scale) × 255 × this, clipped: a fixed scale."""


def _outlines(labels: np.ndarray) -> np.ndarray:
    """Pixels of a label that touch another value (4-neighbourhood)."""
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    return edge & (labels > 0)


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


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless PNG of an RGB ``uint8`` image, made for speed: OpenCV's libpng with the "average" row filter
    and zlib level 2 (on the AGH overlays ~2.5× faster than Pillow at level 3, files ~9 % larger)."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_PNG_COMPRESSION, 2, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


def _legend(draw: ImageDraw.ImageDraw, size: tuple[int, int], counts: dict[str, int], mitotic: int, title: str,
            font: ImageFont.ImageFont | ImageFont.FreeTypeFont, notes: list[str] | None = None) -> None:
    rows = [(COLOURS[p.value], f"{p.value} ({counts[p.value]})") for p in CELL_PATTERNS]
    rows += [(MITOTIC, f"mitotic ({mitotic})"), (EXCLUDED, "not classified"), (ANNOTATION, "annotation")]
    heads = [text for text in [title, *(notes or [])] if text]
    rows = [((255, 255, 255), text) for text in heads] + rows
    line, width = 14, 10 + max(int(draw.textlength(text, font=font)) for _, text in rows) + 22
    x0, y0 = size[0] - width - 8, size[1] - line * len(rows) - 14
    draw.rectangle((x0, y0, size[0] - 8, size[1] - 8), fill=(0, 0, 0), outline=(200, 200, 200))
    for i, (colour, text) in enumerate(rows):
        y = y0 + 4 + i * line
        if i >= len(heads):
            draw.rectangle((x0 + 6, y + 2, x0 + 16, y + 10), fill=colour)
        draw.text((x0 + 22, y), text, fill=(255, 255, 255), font=font)
