"""Stage 1: decoding, validation, every kind of bad input, burned-in annotations."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageDraw

from analysis.decode import ImageLimits, decode_image, find_annotations
from analysis.segmentation import ClassicalSegmenter
from analysis.types import FieldImage, InvalidImageError
from hep2.synthetic import synthetic_field
from hep2.vocabulary import Pattern


def png_bytes(array: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def tiff_bytes(*pages: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tif:
        for page in pages:
            tif.write(page, **kwargs)
    return buf.getvalue()


def png_header_only(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A tiny gray PNG whose IHDR claims ``width`` × ``height`` (a decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


GRAY = (np.arange(128 * 160) % 251).astype(np.uint8).reshape(128, 160)
ACCEPT_16 = ImageLimits(accept_16bit=True)


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"%PDF-1.7\n1 0 obj << >> endobj\n", "PDF"),
    (b"patient,result\n1,positive\n" * 10, "plain text"),
    (b"GIF89a" + b"\0" * 100, "GIF"),
    (b"\x00\x01\x02\x03garbage" * 20, "unrecognised"),
])
def test_not_an_image_is_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(InvalidImageError, match=reason):
        decode_image(data)


def test_truncated_and_corrupt_files_are_rejected() -> None:
    for data in (png_bytes(GRAY), tiff_bytes(GRAY, compression="zlib"), _jpeg(GRAY)):
        with pytest.raises(InvalidImageError):
            decode_image(data[: len(data) // 2])
    corrupt = bytearray(png_bytes(GRAY))
    corrupt[60:80] = b"\xff" * 20
    with pytest.raises(InvalidImageError, match="corrupt or truncated"):
        decode_image(bytes(corrupt))


def test_random_damage_never_leaks_a_decoder_exception() -> None:
    rng = np.random.default_rng(0)
    rgb = np.stack([GRAY, GRAY // 2, GRAY // 3], -1)
    for original in (png_bytes(rgb), tiff_bytes(rgb), _jpeg(GRAY), tiff_bytes(GRAY.astype(np.uint16) * 200)):
        for _ in range(15):
            data = bytearray(original)
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
                data[pos] = int(rng.integers(256))
            try:
                field = decode_image(bytes(data), ACCEPT_16)
            except InvalidImageError:
                continue
            assert field.signal.dtype == np.float32 and 0 <= field.signal.min() <= field.signal.max() <= 1


def test_decompression_bomb_header_is_rejected_before_decoding() -> None:
    with pytest.raises(InvalidImageError, match="too large"):
        decode_image(png_header_only(100_000, 100_000))
    with pytest.raises(InvalidImageError, match="too large"):
        decode_image(png_bytes(GRAY), ImageLimits(max_pixels=10_000))


def test_too_small_and_unsupported_modes_are_rejected() -> None:
    with pytest.raises(InvalidImageError, match="too small"):
        decode_image(png_bytes(np.zeros((32, 32), np.uint8)))
    with pytest.raises(InvalidImageError, match="1-bit"):
        decode_image(png_bytes(np.zeros((80, 80), bool)))
    with pytest.raises(InvalidImageError, match="floating-point"):
        decode_image(tiff_bytes(np.zeros((80, 80), np.float32)))
    with pytest.raises(InvalidImageError, match="too large"):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 10, ImageLimits(max_bytes=5))


def test_gray_8_bit_png_and_blank_image_are_accepted() -> None:
    field = decode_image(png_bytes(GRAY))
    assert isinstance(field, FieldImage)
    assert field.shape == (128, 160) and field.bit_depth == 8 and field.source_format == "PNG"
    np.testing.assert_allclose(field.signal, GRAY / 255, atol=1e-6)
    assert field.channel_rule == "grayscale"
    blank = decode_image(png_bytes(np.zeros((100, 100), np.uint8)))  # an empty well is a valid negative
    assert blank.signal.max() == 0 and not blank.annotation_mask.any()


def test_16_bit_png_and_tiff_are_rejected_by_default_with_a_readable_reason() -> None:
    value = np.full((96, 96), 40_000, np.uint16)
    rgb16 = np.zeros((80, 90, 3), np.uint16)
    cases = [(png_bytes(value), "PNG"), (tiff_bytes(value), "TIFF"), (tiff_bytes(rgb16, photometric="rgb"), "TIFF")]
    for data, fmt in cases:
        with pytest.raises(InvalidImageError) as caught:
            decode_image(data)
        reason = str(caught.value)
        assert reason.startswith(f"16-bit image ({fmt}, 16 bits per sample): this service analyses 8-bit images")
        assert "HEP2_ACCEPT_16BIT=true" in reason and "calibrat" in reason


def test_16_bit_header_is_rejected_before_decoding() -> None:
    header = png_header_only(100_000, 100_000, bit_depth=16)  # 10 GP: far too large to decode
    with pytest.raises(InvalidImageError, match="16-bit image"):
        decode_image(header)
    with pytest.raises(InvalidImageError, match="too large"):
        decode_image(header, ACCEPT_16)


def test_16_bit_png_and_tiff_are_scaled_by_65535_when_accepted() -> None:
    value = np.full((96, 96), 40_000, np.uint16)
    for data, fmt in ((png_bytes(value), "PNG"), (tiff_bytes(value), "TIFF")):
        field = decode_image(data, ACCEPT_16)
        assert field.bit_depth == 16 and field.source_format == fmt
        np.testing.assert_allclose(field.signal, 40_000 / 65535, atol=1e-6)


def test_rgb_becomes_the_green_channel() -> None:
    rgb = np.zeros((80, 90, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    field = decode_image(png_bytes(rgb))
    np.testing.assert_allclose(field.signal, 100 / 255, atol=1e-6)
    assert "green" in field.channel_rule
    rgba = np.concatenate([rgb, np.full((80, 90, 1), 7, np.uint8)], -1)
    np.testing.assert_allclose(decode_image(png_bytes(rgba)).signal, 100 / 255, atol=1e-6)
    rgb16 = np.zeros((80, 90, 3), np.uint16)
    rgb16[..., 1] = 30_000
    field = decode_image(tiff_bytes(rgb16, photometric="rgb"), ACCEPT_16)
    assert field.bit_depth == 16
    np.testing.assert_allclose(field.signal, 30_000 / 65535, atol=1e-6)
    palette = Image.fromarray(rgb).convert("P")
    buf = io.BytesIO()
    palette.save(buf, format="PNG")
    assert abs(float(decode_image(buf.getvalue()).signal.mean()) - 100 / 255) < 0.03


def test_multi_page_tiff_reads_the_first_page() -> None:
    pages = [np.full((70, 70), v, np.uint8) for v in (10, 20, 30)]
    field = decode_image(tiff_bytes(*pages))
    np.testing.assert_allclose(field.signal, 10 / 255, atol=1e-6)
    assert "page 1 of 3" in field.channel_rule


def test_jpeg_is_accepted() -> None:
    field = decode_image(_jpeg(GRAY))
    assert field.source_format == "JPEG" and field.shape == GRAY.shape


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _field_with_scale_bar() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    rgb = synthetic_field(Pattern.HOMOGENEOUS, size=(384, 512), cells=25, seed=3)
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    draw.text((40, 14), "100 µm", fill=(0, 255, 0))
    draw.rectangle((30, 34, 230, 36), fill=(0, 255, 0))  # a 3-px bar, 201 px long
    return np.asarray(img), (10, 30, 40, 231)  # (y0, x0, y1, x1) of bar + text


def test_drawn_scale_bar_and_text_are_masked_and_never_segmented() -> None:
    rgb, (y0, x0, y1, x1) = _field_with_scale_bar()
    field = decode_image(png_bytes(rgb))
    mask = field.annotation_mask
    drawn = np.zeros(mask.shape, bool)
    drawn[y0:y1, x0:x1] = (rgb[y0:y1, x0:x1, 1] == 255)
    assert drawn.sum() > 300 and mask[drawn].all()
    assert mask.mean() < 0.1  # the bar's neighbourhood, not the field
    labels = ClassicalSegmenter().segment(field)
    assert labels.max() > 5 and not (labels[mask] > 0).any()
    plain = decode_image(png_bytes(synthetic_field(Pattern.SPECKLED, size=(384, 512), cells=25, seed=3)))
    assert not plain.annotation_mask.any()  # nuclei and noise are never taken for an annotation


def test_find_annotations_ignores_round_bright_objects() -> None:
    yy, xx = np.mgrid[0:300, 0:300]
    disks = ((yy - 150) ** 2 + (xx - 150) ** 2 < 60**2).astype(np.float32)  # flat and saturated, but round
    assert not find_annotations(disks).any()


@pytest.mark.data
def test_agh_scale_bars_are_masked_and_no_cell_overlaps_them(shared_data) -> None:
    paths = sorted((shared_data / "agh-fields").glob("*.png"))
    assert len(paths) >= 20
    segmenter = ClassicalSegmenter()
    with_bar = 0
    for path in paths:
        field = decode_image(path.read_bytes())
        rgb = np.asarray(Image.open(path).convert("RGB"))[:150, :400, 1].astype(int)
        # the burned-in bar: a long run of one exact value, brighter than the row under it
        rows = [y for y in range(149) if np.ptp(rgb[y, 40:200]) == 0 and rgb[y, 100] - rgb[y + 1, 100] > 20]
        if rows:
            with_bar += 1
            assert field.annotation_mask[rows[0], 40:200].all(), path.name
        corner = (slice(0, 300), slice(0, 500))  # the bar's corner: segment it with the mask
        labels = segmenter.segment(FieldImage(field.signal[corner], 8, "PNG", "", field.annotation_mask[corner]))
        assert not (labels[field.annotation_mask[corner]] > 0).any(), path.name
    assert with_bar >= 20
