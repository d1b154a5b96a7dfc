"""Stage 1: decode and validate an uploaded slide-well image into a :class:`FieldImage`.

Rules (every rejection raises :class:`InvalidImageError` with a readable reason; no Pillow/tifffile
exception escapes):

* **Formats**: PNG and JPEG (Pillow), TIFF (tifffile, so 16-bit RGB works; Pillow is the fallback for TIFF
  compressions tifffile cannot decode without ``imagecodecs``). The format is recognised from the file's
  magic bytes, never from its name; anything else (PDF, text, GIF, ...) is rejected.
* **Size guards, checked from the header before any pixel is decoded**: at most ``max_bytes`` of input,
  ``max_pixels`` (default 40 MP) per image, and a decoded array of at most ``max_decoded_bytes``; Pillow's
  ``DecompressionBombWarning``/``Error`` are turned into rejections. Images smaller than ``min_side`` (64 px)
  a side are rejected (a field, not a cell crop).
* **Multi-page TIFF**: the first page (IFD 0) is analysed, the rule is recorded in ``channel_rule``
  ("page 1 of N"). Multi-frame PNG/JPEG: the first frame.
* **Channels**: RGB(A) → the green channel (FITC), alpha dropped; gray as is; palette images are expanded to
  RGB first (then green); 1-bit, floating-point and 32-bit integer images are rejected (no fluorescence
  scale); other colour spaces (CMYK, YCbCr, LAB) are rejected.
* **Bit depth**: more than 8 bits per sample (16-bit PNG, 9–16-bit TIFF) is rejected from the header unless
  ``ImageLimits.accept_16bit`` (the service sets it from ``HEP2_ACCEPT_16BIT``): the classifier was trained
  and the intensity cut-offs calibrated on 8-bit images, so a 16-bit image's fluorescence index is not
  comparable to the lab's calibration. Accepted, 16-bit images are decoded as follows.
* **Scale**: ``signal = value / full scale``: 255 for 8-bit, 65535 for 16-bit, except a TIFF whose
  BitsPerSample says 9–15 (a packed 12-bit camera image, say), which is scaled by ``2**bits - 1``.
  16-bit *RGB* PNG: Pillow keeps only the most significant byte of each sample, so such PNGs are read at
  8-bit precision on the same scale (``bit_depth`` stays 16); use TIFF for full 16-bit colour.
* **Blank images** (constant, or no signal) are accepted: an empty or negative well is a valid result.
* **Burned-in annotations** (scale bars and their text): :func:`find_annotations` sets ``annotation_mask``.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

from analysis.types import FieldImage, InvalidImageError


@dataclass(frozen=True)
class ImageLimits:
    """Input limits; the defaults suit microscope fields (1–20 MP) with a wide margin."""

    max_bytes: int = 200 * 2**20  # 200 MiB of encoded input
    max_pixels: int = 40_000_000  # 40 MP per image (from the header)
    max_decoded_bytes: int = 512 * 2**20  # height × width × samples × bytes/sample of the page read
    min_side: int = 64  # px; smaller is a crop or a thumbnail, not a field
    detect_annotations: bool = True
    accept_16bit: bool = False  # more than 8 bits per sample; off = rejected (8-bit calibration)


MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
         b"II+\x00": "TIFF", b"MM\x00+": "TIFF"}
KNOWN_OTHERS = {b"%PDF": "a PDF document", b"GIF8": "a GIF image", b"BM": "a BMP image", b"PK\x03\x04": "a ZIP archive",
                b"RIFF": "a RIFF (WebP/AVI/WAV) file", b"\x1f\x8b": "a gzip archive", b"{": "JSON text",
                b"<": "XML/HTML text"}


def sniff(data: bytes) -> str:
    """The format name from the magic bytes, or raise with what the data looks like."""
    for magic, name in MAGIC.items():
        if data.startswith(magic):
            return name
    for magic, what in KNOWN_OTHERS.items():
        if data.lstrip()[: len(magic)] == magic:
            raise InvalidImageError(f"not a supported image (PNG, TIFF or JPEG): the data looks like {what}")
    head = data[:512]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        raise InvalidImageError("not a supported image (PNG, TIFF or JPEG): the data is plain text")
    raise InvalidImageError("not a supported image (PNG, TIFF or JPEG): unrecognised file signature")


def _check_size(width: int, height: int, samples: int, itemsize: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(f"image header declares an empty size ({width}×{height})")
    if width * height > limits.max_pixels:
        raise InvalidImageError(f"image too large: {width}×{height} px = {width * height / 1e6:.0f} MP exceeds the "
                                f"limit of {limits.max_pixels / 1e6:.0f} MP (possible decompression bomb)")
    if width * height * samples * itemsize > limits.max_decoded_bytes:
        raise InvalidImageError(f"image too large to decode: {width}×{height}×{samples} samples of {itemsize} bytes")
    if min(width, height) < limits.min_side:
        raise InvalidImageError(f"image too small: {width}×{height} px; a field needs at least {limits.min_side} px "
                                "a side")


def _to_signal(array: np.ndarray, full_scale: float, rule: str) -> tuple[np.ndarray, str]:
    """(H, W) or (H, W, C) samples → float32 (H, W) in [0, 1] and the channel rule."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        plane, how = array, "grayscale"
    elif array.ndim == 3 and array.shape[2] == 2:
        plane, how = array[..., 0], "grayscale (alpha dropped)"
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        plane, how = array[..., 1], "green (FITC) channel of RGB" + ("A" if array.shape[2] == 4 else "")
    else:
        raise InvalidImageError(f"unsupported sample layout {array.shape}: expected gray or RGB(A)")
    signal = np.clip(plane.astype(np.float32) / full_scale, 0.0, 1.0)
    return signal, ", ".join(x for x in (how, rule) if x)


def _check_bit_depth(fmt: str, bits: int, limits: ImageLimits) -> None:
    """Reject more than 8 bits per sample unless ``limits.accept_16bit`` (see the module docstring)."""
    if bits > 8 and not limits.accept_16bit:
        raise InvalidImageError(
            f"{bits}-bit image ({fmt}, {bits} bits per sample): this service analyses 8-bit images (the classifier and "
            "the intensity cut-offs are calibrated on 8-bit scans, so the fluorescence index would not be "
            "comparable); set HEP2_ACCEPT_16BIT=true after calibrating intensity cut-offs for 16-bit scans")


# ------------------------------------------------------------------------------------------------ Pillow
PIL_MODES = {"L": (8, 255.0), "LA": (8, 255.0), "RGB": (8, 255.0), "RGBA": (8, 255.0), "RGBX": (8, 255.0),
             "I;16": (16, 65535.0), "I;16L": (16, 65535.0), "I;16B": (16, 65535.0), "I;16N": (16, 65535.0)}


def _decode_pillow(data: bytes, fmt: str, limits: ImageLimits) -> tuple[np.ndarray, int, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=[fmt])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidImageError(f"image too large (decompression bomb guard): {exc}") from None
        with img:
            width, height = img.size
            _check_size(width, height, len(img.getbands()), 2 if img.mode.startswith("I") else 1, limits)
            frames = getattr(img, "n_frames", 1)
            rule = f"frame 1 of {frames}" if frames > 1 else ""
            mode = img.mode
            if mode == "1":
                raise InvalidImageError("1-bit (black-and-white) images carry no fluorescence intensity")
            if mode == "F" or (mode == "I" and fmt != "PNG"):
                raise InvalidImageError(f"{mode!r} (floating-point / 32-bit) images are not supported")
            img.load()
            if mode in ("P", "PA"):
                img, rule = img.convert("RGBA" if mode == "PA" else "RGB"), ", ".join(filter(None, ["palette", rule]))
            array = np.asarray(img)
            if mode == "I":  # 16-bit gray PNG opened as 32-bit by some Pillow versions
                if array.max(initial=0) > 65535 or array.min(initial=0) < 0:
                    raise InvalidImageError("32-bit integer images are not supported")
                bits, full = 16, 65535.0
            elif img.mode in PIL_MODES:
                bits, full = PIL_MODES[img.mode]
                if fmt == "PNG" and img.mode in ("RGB", "RGBA") and _png_bit_depth(data) == 16:
                    bits = 16  # Pillow reduced each sample to its most significant byte (see module docstring)
            else:
                raise InvalidImageError(f"unsupported colour mode {img.mode!r}: expected gray or RGB")
    signal, rule = _to_signal(array, full, rule)
    return signal, bits, rule


def _png_bit_depth(data: bytes) -> int:
    return data[24] if len(data) > 24 and data[12:16] == b"IHDR" else 8


# ---------------------------------------------------------------------------------------------- tifffile
def _decode_tiff(data: bytes, limits: ImageLimits) -> tuple[np.ndarray, int, str]:

    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        n_pages = len(tif.pages)
        if n_pages == 0:
            raise InvalidImageError("TIFF file has no image pages")
        page = tif.pages[0]
        axes, shape, dtype = page.axes, page.shape, np.dtype(page.dtype or np.uint8)
        width, height = int(page.imagewidth), int(page.imagelength)
        samples = int(page.samplesperpixel)
        _check_size(width, height, samples, dtype.itemsize, limits)
        if dtype.kind == "f":
            raise InvalidImageError("floating-point TIFF images are not supported (no fluorescence full scale)")
        if dtype == np.bool_ or page.bitspersample == 1:
            raise InvalidImageError("1-bit (black-and-white) images carry no fluorescence intensity")
        if dtype.kind not in "ui" or dtype.itemsize > 2:
            raise InvalidImageError(f"unsupported TIFF sample type {dtype} ({page.bitspersample} bits)")
        if len(shape) > 3 or ("S" not in axes and len(shape) == 3):
            raise InvalidImageError(f"unsupported TIFF page layout {axes} {shape}: expected gray or RGB(A)")
        _check_bit_depth("TIFF", int(page.bitspersample), limits)
        try:
            array = page.asarray()
        except Exception as exc:  # tifffile raises many types; a codec it lacks → try Pillow
            if "imagecodecs" in str(exc) or isinstance(exc, NotImplementedError):
                signal, bits, rule = _decode_pillow(data, "TIFF", limits)
                return signal, bits, ", ".join(filter(None, [rule, f"page 1 of {n_pages}" if n_pages > 1 else ""]))
            raise
        if array.ndim == 3 and axes.index("S") == 0:
            array = np.moveaxis(array, 0, -1)
        photometric = int(page.photometric)
        if photometric == 3 and page.colormap is not None:  # palette → RGB (colormap is 16-bit)
            array, dtype = np.moveaxis(page.colormap, 0, -1)[array], np.dtype(np.uint16)
        elif photometric == 0:  # MINISWHITE: invert so that bright = stained
            array = np.iinfo(array.dtype).max - array if array.dtype.kind == "u" else array
        bits = int(page.bitspersample) if photometric != 3 else 16
    full = 255.0 if dtype.itemsize == 1 else float(2 ** min(max(bits, 9), 16) - 1)
    rule = f"page 1 of {n_pages}" if n_pages > 1 else ""
    if array.dtype.kind == "i":
        array = np.clip(array, 0, None)
    signal, rule = _to_signal(array, full, rule)
    return signal, 8 if dtype.itemsize == 1 else 16, rule


# ----------------------------------------------------------------------------------------- annotations
def find_annotations(signal: np.ndarray, min_length: int | None = None, step: float = 6 / 255,
                     tolerance: float = 1.5 / 255) -> np.ndarray:
    """Mask of burned-in scale bars, their frames and text (bool, same shape as ``signal``).

    A burned-in overlay draws *perfectly straight, perfectly flat* edges: runs of at least ``min_length``
    pixels (default 4 % of the longer side, ≥ 40) along a row (or column) whose values are constant within
    ``tolerance`` while the next row (column) differs by at least ``step`` all along. Nuclei are curved and
    camera pixels noisy, so they do not produce such runs. Each run is taken with a box around it: along the
    run ±4 px, across it ±max(8, 15 % of the run length), which covers the bar's frame and the label text
    ("20 µm") drawn next to or inside it.
    """
    h, w = signal.shape
    length = (min_length or max(40, round(0.04 * max(h, w)))) | 1  # odd: a symmetric 1-D opening
    mask = np.zeros((h, w), bool)
    for axis in (1, 0):  # runs along rows, then along columns (no transposed copy: OpenCV works either way)
        along = (slice(None), slice(1, None)) if axis == 1 else (slice(1, None), slice(None))
        before = (slice(None), slice(None, -1)) if axis == 1 else (slice(None, -1), slice(None))
        flat = np.zeros((h, w), bool)
        flat[before] = _absdiff(signal[along], signal[before]) <= tolerance  # = np.abs(np.diff(g, axis))
        flat[along] |= flat[before]
        across = (slice(1, None), slice(None)) if axis == 1 else (slice(None), slice(1, None))
        behind = (slice(None, -1), slice(None)) if axis == 1 else (slice(None), slice(None, -1))
        jump = _absdiff(signal[across], signal[behind]) >= step
        edge = np.zeros((h, w), bool)
        edge[behind] |= jump
        edge[across] |= jump
        candidate = flat & edge
        # pixels inside a run of ≥ length candidates: erode then dilate along the run (1-D opening)
        long_runs = _open_line(candidate, length, axis) & candidate
        for y, x0, x1 in _row_runs(long_runs if axis == 1 else long_runs.T):
            pad = max(8, round(0.15 * (x1 - x0)))
            if axis == 1:
                mask[max(y - pad, 0):y + 1 + pad, max(x0 - 4, 0):x1 + 4] = True
            else:
                mask[max(x0 - 4, 0):x1 + 4, max(y - pad, 0):y + 1 + pad] = True
    return mask


def _absdiff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.abs(a - b)`` (the same values: one rounding of the difference, then its magnitude), by OpenCV for
    float32 images."""
    if a.dtype == b.dtype == np.float32 and a.ndim == 2 and a.size:
        return cv2.absdiff(a, b)
    return np.abs(a - b)


def _open_line(candidate: np.ndarray, length: int, axis: int) -> np.ndarray:
    """``maximum_filter1d(minimum_filter1d(candidate, length, axis), length, axis)`` of a boolean image
    (scipy's ``reflect`` border: the window's part inside the image) by OpenCV's erosion and dilation with a
    line of ``length`` pixels (replicated border: the same), as bool."""
    u8 = np.ascontiguousarray(candidate).view(np.uint8)
    if candidate.ndim != 2 or not candidate.size:
        return ndimage.maximum_filter1d(ndimage.minimum_filter1d(u8, length, axis=axis), length,
                                        axis=axis).astype(bool)
    line = np.ones((1, length) if axis == 1 else (length, 1), np.uint8)
    eroded = cv2.erode(u8, line, borderType=cv2.BORDER_REPLICATE)
    return cv2.dilate(eroded, line, borderType=cv2.BORDER_REPLICATE).astype(bool)


def _row_runs(runs: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, start, stop) of every horizontal run of True (the objects of a row-wise labelling)."""
    out: list[tuple[int, int, int]] = []
    for y in np.flatnonzero(runs.any(axis=1)):
        d = np.diff(runs[y].astype(np.int8), prepend=np.int8(0), append=np.int8(0))
        out += [(int(y), int(a), int(b)) for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1),
                                                          strict=True)]
    return out


# ------------------------------------------------------------------------------------------------- main
def decode_image(data: bytes, limits: ImageLimits | None = None) -> FieldImage:
    """Validate and decode PNG/TIFF/JPEG bytes to a :class:`FieldImage` (see the module docstring)."""
    limits = limits or ImageLimits()
    if not data:
        raise InvalidImageError("empty file (0 bytes)")
    if len(data) > limits.max_bytes:
        raise InvalidImageError(f"file too large: {len(data) / 2**20:.0f} MiB exceeds "
                                f"{limits.max_bytes / 2**20:.0f} MiB")
    fmt = sniff(bytes(data[:1024]))
    if fmt == "PNG":
        _check_bit_depth(fmt, _png_bit_depth(data), limits)
    try:
        if fmt == "TIFF":
            signal, bits, rule = _decode_tiff(data, limits)
        else:
            signal, bits, rule = _decode_pillow(data, fmt, limits)
    except InvalidImageError:
        raise
    except MemoryError:
        raise InvalidImageError("image too large to decode in memory") from None
    except Exception as exc:  # corrupt / truncated data: every decoder error is a rejection
        raise InvalidImageError(f"corrupt or truncated {fmt} file: {type(exc).__name__}: {exc}"[:300]) from None
    annotations = find_annotations(signal) if limits.detect_annotations else np.zeros(signal.shape, bool)
    return FieldImage(signal=np.ascontiguousarray(signal, np.float32), bit_depth=bits, source_format=fmt,
                      channel_rule=rule, annotation_mask=annotations)


def decode_upload(data: bytes, accept_16bit: bool = False) -> FieldImage:
    """An uploaded field decoded as the service analyses it (default limits; ``accept_16bit``:
    ``HEP2_ACCEPT_16BIT``): ``analyze_field`` and the overlay rendered on request both decode this way."""
    return decode_image(data, ImageLimits(accept_16bit=accept_16bit))
