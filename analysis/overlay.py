"""The overlay for the dashboard: the field, each cell's outline coloured by its class, a legend.

Made in two steps so that the worker does not encode a full-size RGB PNG for every field:

* :func:`render_layer` (``analyze_field``'s ``overlay`` stage): what the overlay needs beyond the uploaded
  image, as a small **palette PNG** of the field's size: index 0 = the field shows through (transparent),
  the other entries the outline colours (:data:`LAYER_PALETTE`); the legend (title, scale, measured index,
  counts) and the positions of the "M" labels travel as JSON in the PNG's text chunk ``hep2-overlay``.
* :func:`compose_overlay`: the field (decoded from the upload exactly as the worker did) + the layer → the
  overlay PNG, pixel for pixel what one renderer drawing everything at once gave: the "M" labels and the
  legend are drawn here with the same font, positions and order. The service renders it on first request
  and caches it (``services/overlays.py``); ``hep2 analyze|evaluate fields --overlay-dir`` call it too.

Brightness is shown faithfully: the field is drawn on a **fixed scale**, 0 to the full scale of its bit depth
(× ``DISPLAY_GAIN`` = 1, no per-image stretch), so a negative well looks dark and a strong positive bright;
the legend names the scale and prints the measured fluorescence index and class. The dashboard shows a
contrast-stretched copy of the raw image beside it, labelled as such, for reading the pattern. Excluded cells
(border, annotation, size) get a thin grey outline, mitotic cells a white outline and a white "M"; the
burned-in annotation is tinted magenta.
"""

from __future__ import annotations

import io
import json
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from analysis.cells import Cell
from analysis.decode import decode_upload
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
UNMEASURED = (0, 0, 0)
"""Outline of a segment without a :class:`Cell` record."""
DISPLAY_GAIN = 1.0
"""Overlay grey level = signal (fraction of the bit depth's full scale) × 255 × this, clipped: a fixed scale."""
LAYER_PALETTE: list[tuple[int, int, int]] = [(0, 0, 0), *(COLOURS[p.value] for p in CELL_PATTERNS), MITOTIC,
                                             EXCLUDED, UNMEASURED]
"""The layer's palette: 0 = the field (transparent), then the outline colours."""
LAYER_TEXT = "hep2-overlay"
"""The layer PNG's text chunk: JSON with the legend and the "M" positions (field pixels)."""
_INDEX = {colour: i for i, colour in enumerate(LAYER_PALETTE) if i}


def _outlines(labels: np.ndarray) -> np.ndarray:
    """Pixels of a label that touch another value (4-neighbourhood)."""
    edge = np.zeros(labels.shape, bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    return edge & (labels > 0)


def render_layer(field: FieldImage, labels: np.ndarray, cells: list[Cell], title: str = "",
                 index: float | None = None, intensity_class: str | None = None) -> bytes:
    """The overlay layer (palette PNG + legend JSON, see the module docstring) of one analysed field;
    ``index``/``intensity_class``: the measured fluorescence index, printed in the legend."""
    lut = np.full(int(labels.max()) + 1, _INDEX[UNMEASURED], np.uint8)
    counts = dict.fromkeys(COLOURS, 0)
    marks: list[list[int]] = []
    for c in cells:
        if c.label >= len(lut):
            continue
        if c.mitotic:
            lut[c.label] = _INDEX[MITOTIC]
            marks.append([int(c.bbox[3]), int(c.bbox[0])])
        elif c.excluded is not None or c.pattern is None:
            lut[c.label] = _INDEX[EXCLUDED]
        else:
            lut[c.label] = _INDEX[COLOURS[c.pattern]]
            counts[c.pattern] += 1
    edge = _outlines(labels)
    thick = edge.copy()  # 2 px: the outline and its neighbours below and to the right
    thick[1:] |= edge[:-1]
    thick[:, 1:] |= edge[:, :-1]
    thick &= labels > 0
    layer = np.zeros(labels.shape, np.uint8)
    layer[thick] = lut[labels[thick]]
    scale_note = f"fixed scale 0-{2 ** field.bit_depth - 1}" + (f" x{DISPLAY_GAIN:g}" if DISPLAY_GAIN != 1 else "")
    measured = f"index {index:.1f}" + (f" ({intensity_class})" if intensity_class else "") if index is not None else ""
    legend = {"title": title, "notes": [scale_note, measured], "counts": counts, "marks": marks}
    image = Image.fromarray(layer, "P")
    image.putpalette([v for colour in LAYER_PALETTE for v in colour])
    info = PngImagePlugin.PngInfo()
    info.add_text(LAYER_TEXT, json.dumps(legend))
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info, transparency=0, compress_level=3)  # ~4 ms, ~30 KB
    return out.getvalue()


def read_layer(layer_png: bytes) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(palette index per pixel, palette RGB rows, legend) of a layer from :func:`render_layer`."""
    image = Image.open(io.BytesIO(layer_png))
    if image.format != "PNG" or image.mode != "P" or LAYER_TEXT not in getattr(image, "text", {}):
        raise ValueError("not an overlay layer (a palette PNG with a hep2-overlay text chunk)")
    palette = np.array(image.getpalette() or [], np.uint8).reshape(-1, 3)
    return np.asarray(image), palette, json.loads(image.text[LAYER_TEXT])


def compose_overlay(field: FieldImage, layer_png: bytes, max_side: int = 1600) -> bytes:
    """PNG bytes of the overlay: ``field`` on a fixed scale, the annotation tinted, the layer's outlines, the
    "M" labels and the legend (downscaled so that the longer side is at most ``max_side``)."""
    index, palette, legend = read_layer(layer_png)
    if index.shape != field.shape:
        raise ValueError(f"the overlay layer is {index.shape[1]}x{index.shape[0]}, the field "
                         f"{field.shape[1]}x{field.shape[0]}: not this field's layer")
    grey = np.clip(field.signal * DISPLAY_GAIN, 0, 1) * 255  # float32; uint8 by truncation, as always
    rgb = np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
    ann = field.annotation_mask
    rgb[ann] = (0.5 * grey[ann][:, None] + 0.5 * np.array(ANNOTATION)).astype(np.float32).astype(np.uint8)
    drawn = index > 0
    rgb[drawn] = palette[index[drawn]]
    image = Image.fromarray(rgb)
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for x, y in legend["marks"]:
        draw.text((x * scale + 2, y * scale - 4), "M", fill=MITOTIC, font=font)
    _legend(draw, image.size, legend["counts"], len(legend["marks"]), legend["title"], font, legend["notes"])
    return encode_png(np.asarray(image))


def overlay_of_upload(data: bytes, layer_png: bytes, accept_16bit: bool = False) -> bytes:
    """The overlay PNG of an analysed upload: ``data`` decoded exactly as ``analyze_field`` decoded it (pass
    the same ``accept_16bit``), composed with the layer it produced (``SlideAnalysis.overlay_layer``)."""
    return compose_overlay(decode_upload(data, accept_16bit), layer_png)


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
