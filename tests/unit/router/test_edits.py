"""An edit's files: decoded, checked and resized before anything reaches a tier (pure)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from duotone_router.edits import MASK_CHANGE, MAX_DECODED_PIXELS, decode_edit, open_image
from duotone_router.forms import FORM_OVERHEAD_BYTES, edit_body_limits
from duotone_router.policy.reasons import Refused

pytestmark = pytest.mark.unit


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def rgb(width: int, height: int, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    return encoded(Image.new("RGB", (width, height), colour))


def mask(width: int, height: int, hole: tuple[int, int, int, int]) -> bytes:
    """Opaque everywhere but the transparent box `hole` (left, top, right, bottom)."""
    image = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    image.paste((0, 0, 0, 0), hole)
    return encoded(image)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (what a decompression bomb looks like)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_every_format_decodes_to_raw_rgb_at_the_requested_size(fmt: str) -> None:
    edit = decode_edit([encoded(Image.new("RGB", (96, 80), (10, 20, 30)), fmt)], None, "64x64")
    assert (edit.width, edit.height, edit.mask, edit.images_sent) == (64, 64, b"", 1)
    pixels = np.frombuffer(edit.image, np.uint8).reshape(64, 64, 3)
    assert np.abs(pixels.astype(int) - (10, 20, 30)).max() <= 3  # lossy formats


def test_auto_size_rounds_the_image_down_to_multiples_of_8() -> None:
    edit = decode_edit([rgb(101, 77)], None, "auto")
    assert (edit.width, edit.height) == (96, 72)
    assert len(edit.image) == 96 * 72 * 3
    assert (decode_edit([rgb(64, 64)], None, None).width) == 64


def test_a_mask_marks_its_transparent_pixels_to_change_and_stays_binary() -> None:
    edit = decode_edit([rgb(128, 128)], mask(128, 128, (0, 0, 64, 128)), "64x64")
    changed = np.frombuffer(edit.mask, np.uint8).reshape(64, 64)
    assert set(np.unique(changed)) == {0, MASK_CHANGE}
    assert (changed[:, :32] == MASK_CHANGE).all()
    assert (changed[:, 32:] == 0).all()


def test_every_file_counts_towards_the_limits() -> None:
    big = rgb(64, 64)
    edit = decode_edit([rgb(8, 8), big, rgb(16, 16)], mask(8, 8, (0, 0, 4, 4)), "64x64")
    assert edit.images_sent == 3
    assert edit.largest_file_bytes == len(big)


@pytest.mark.parametrize(
    ("images", "mask_file", "size", "param", "message"),
    [
        pytest.param([], None, None, "image", "is required", id="no image"),
        pytest.param([b"GIF89a not a png"], None, None, "image", "not a readable", id="text"),
        pytest.param([b""], None, None, "image", "is empty", id="empty file"),
        pytest.param(
            [encoded(Image.new("RGB", (8, 8)), "GIF")],
            None,
            None,
            "image",
            "not a readable",
            id="gif is not a served format",
        ),
        pytest.param([rgb(64, 64), b"junk"], None, None, "image", "not a readable", id="2nd bad"),
        pytest.param(
            [rgb(64, 64)],
            mask(32, 32, (0, 0, 8, 8)),
            None,
            "mask",
            "must be the image's size",
            id="mask of another size",
        ),
        pytest.param(
            [rgb(64, 64)], rgb(64, 64), None, "mask", "has no alpha channel", id="mask opaque"
        ),
        pytest.param([rgb(64, 64)], b"junk", None, "mask", "not a readable", id="mask not image"),
        pytest.param([rgb(7, 64)], None, "auto", "image", "too small", id="narrower than 8"),
    ],
)
def test_bad_files_are_refused_naming_the_field(
    images: list[bytes], mask_file: bytes | None, size: str | None, param: str, message: str
) -> None:
    with pytest.raises(Refused) as refused:
        decode_edit(images, mask_file, size)
    assert refused.value.param == param
    assert message in str(refused.value)


def test_a_bomb_is_refused_from_its_header_without_decoding() -> None:
    side = int(MAX_DECODED_PIXELS**0.5) + 1
    with pytest.raises(Refused) as refused:
        open_image(png_header_only(side, side), "image")
    assert refused.value.param == "image"
    assert f"{side}x{side} is larger than the {MAX_DECODED_PIXELS} pixels decoded" in str(
        refused.value
    )


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        pytest.param([], (FORM_OVERHEAD_BYTES, 0), id="no tier takes edits"),
        pytest.param([(100, 4)], (500 + FORM_OVERHEAD_BYTES, 100), id="4 images and a mask"),
        pytest.param(
            [(100, 4), (300, 1)], (600 + FORM_OVERHEAD_BYTES, 300), id="the largest of each"
        ),
    ],
)
def test_edit_body_limits(limits: list[tuple[int, int]], expected: tuple[int, int]) -> None:
    assert edit_body_limits(limits) == expected
