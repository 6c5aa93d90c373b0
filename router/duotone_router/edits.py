"""An edit's input files: decoded, checked and resized here, so a tier pod gets raw pixels only.

Pure: file bytes and the requested size in, raw RGB (and mask) bytes at the output size out, or
`Refused` naming the field (`image`, `mask` or `size`). Only PNG, JPEG and WebP are opened; a
file's dimensions are read from its header and refused beyond `MAX_DECODED_PIXELS` before any
pixel is decoded, so a small file that would inflate to gigabytes never does. The first image is
the one edited. A mask is a PNG (or WebP) with alpha, the size of the image: its fully
transparent pixels mark the area to change. The output size is the requested `size`, or with
`auto` (or none) the image's own size rounded down to multiples of 8; the image is resized to
it (Lanczos) and the mask too (nearest neighbour, so it stays binary).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
from PIL import Image, UnidentifiedImageError

from duotone_contracts.api.v1alpha1 import PIXEL_MULTIPLE
from duotone_router.policy.reasons import Reason, Refused

MAX_DECODED_PIXELS: Final = 4096 * 4096
"""Largest input image or mask decoded (16.7 Mpx, 50 MiB as RGB), whatever its file size."""
FORMATS: Final = ("PNG", "JPEG", "WEBP")
MASK_CHANGE: Final = 255
"""A mask byte marking a pixel to change (0: keep it)."""


@dataclass(frozen=True)
class EditImages:
    """The edited image and its mask at the output size, and what the client sent."""

    width: int
    height: int
    image: bytes = field(repr=False)
    """Raw RGB, height x width x 3."""
    mask: bytes = field(repr=False)
    """One byte per pixel, MASK_CHANGE where the image changes; empty without a mask."""
    images_sent: int
    largest_file_bytes: int
    """The largest input file (image or mask), for the tier's limits.maxInputImageBytes."""


def _refuse(param: str, message: str) -> Refused:
    return Refused(Reason.INVALID_VALUE, f"{param}: {message}", param=param)


def open_image(data: bytes, param: str) -> Image.Image:
    """Decode one file (PNG, JPEG or WebP, at most MAX_DECODED_PIXELS); Refused otherwise."""
    if not data:
        raise _refuse(param, "is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > MAX_DECODED_PIXELS:
                raise _refuse(
                    param,
                    f"{width}x{height} is larger than the {MAX_DECODED_PIXELS} pixels decoded",
                )
            image.load()
    except Refused:
        raise
    except UnidentifiedImageError as error:
        raise _refuse(param, "is not a readable PNG, JPEG or WebP image") from error
    except (OSError, ValueError, SyntaxError, Warning) as error:
        raise _refuse(param, f"is not a readable PNG, JPEG or WebP image ({error})") from error
    except Image.DecompressionBombError as error:
        raise _refuse(param, "is larger than the pixels decoded") from error
    return image


def output_size(size: str | None, image: Image.Image) -> tuple[int, int]:
    """The requested size, or the image's own rounded down to multiples of 8."""
    if size is not None and size != "auto":
        asked = size.split("x")
        return int(asked[0]), int(asked[1])
    width, height = image.size
    fitted = (width - width % PIXEL_MULTIPLE, height - height % PIXEL_MULTIPLE)
    if min(fitted) < PIXEL_MULTIPLE:
        raise _refuse("image", f"{width}x{height} is too small to edit")
    return fitted


def _mask_alpha(mask: Image.Image) -> Image.Image:
    if mask.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in mask.info:
        return mask.convert("RGBA").getchannel("A")
    raise _refuse("mask", "has no alpha channel: its transparent pixels mark the area to change")


def decode_edit(images: Sequence[bytes], mask: bytes | None, size: str | None) -> EditImages:
    """Decode, check and resize an edit's files (the first image is edited)."""
    if not images:
        raise _refuse("image", "is required: send the image to edit as a file")
    source = open_image(images[0], "image")
    for extra in images[1:]:
        open_image(extra, "image")  # every file sent must be an image
    width, height = output_size(size, source)
    rgb = source.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.LANCZOS)
    mask_bytes = b""
    if mask is not None:
        opened = open_image(mask, "mask")
        if opened.size != source.size:
            raise _refuse(
                "mask",
                f"{opened.size[0]}x{opened.size[1]} must be the image's size "
                f"{source.size[0]}x{source.size[1]}",
            )
        alpha = _mask_alpha(opened)
        if alpha.size != (width, height):
            alpha = alpha.resize((width, height), Image.Resampling.NEAREST)
        change = np.asarray(alpha) == 0
        mask_bytes = np.where(change, MASK_CHANGE, 0).astype(np.uint8).tobytes()
    files = [*images, *([mask] if mask is not None else [])]
    return EditImages(
        width=width,
        height=height,
        image=np.asarray(rgb, dtype=np.uint8).tobytes(),
        mask=mask_bytes,
        images_sent=len(images),
        largest_file_bytes=max(len(f) for f in files),
    )
