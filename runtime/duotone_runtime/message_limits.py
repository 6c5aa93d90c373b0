"""The largest request and response a tier's gate passes, derived from the tier's limits.

Without bounds the gate read HTTP bodies of up to 1 GiB into memory and took gRPC messages of
any size. A valid request is two texts of at most `maxPromptLength` characters plus a few
scalars (plus, on a tier that serves edits, one raw RGB image and its one-byte-per-pixel mask of
the largest size), and a valid response is at most `maxImagesPerRequest` images of the largest
size, so the bounds follow from the tier document (pure).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from duotone_contracts.api.v1alpha1 import RequestLimits

REQUEST_OVERHEAD_BYTES: Final = 16 * 1024
"""Everything of a request besides its texts: input names, shapes, datatypes, the six scalar
inputs, the request id, parameters, JSON or protobuf framing (a real one is under 2 KiB)."""
RESPONSE_OVERHEAD_BYTES: Final = 64 * 1024
PNG_OVERHEAD_BYTES: Final = 64 * 1024
"""Per image: signature, IHDR, IEND and zlib's header and checksum (well under 1 KiB)."""
JSON_BYTES_PER_CHARACTER: Final = 12
"""A character outside the BMP written as a JSON escaped surrogate pair: `\\ud83d\\ude00`."""
UTF8_BYTES_PER_CHARACTER: Final = 4
TEXT_INPUTS: Final = 2
"""PROMPT and NEGATIVE_PROMPT, each at most `maxPromptLength` characters."""
EDIT_BYTES_PER_PIXEL: Final = 4
"""An edit's IMAGE (3 bytes per pixel) and MASK (1), raw: over HTTP they travel in Triton's
binary tensor extension (raw bytes are not JSON strings)."""


@dataclass(frozen=True)
class MessageLimits:
    """Byte bounds the gate enforces (HTTP 413, gRPC RESOURCE_EXHAUSTED beyond them)."""

    http_request_bytes: int
    """An HTTP body: JSON (texts possibly escaped) or the binary tensor extension."""
    grpc_request_bytes: int
    """One gRPC message: texts as UTF-8 bytes."""
    response_bytes: int
    """One gRPC response message: every image of a request, as PNG."""


def image_bound(width: int, height: int) -> int:
    """The most bytes one output image of this size takes in any output format (pure): a PNG
    (`png_bound`); JPEG at quality 100 with 4:4:4 chroma (1.4x the raw pixels on noise) and
    WebP at quality 100 stay under twice the raw pixels
    (tests/unit/runtime/test_message_limits.py)."""
    return max(png_bound(width, height), 2 * width * height * 3 + PNG_OVERHEAD_BYTES)


def png_bound(width: int, height: int) -> int:
    """The most bytes an RGB PNG of this size can take (pure): one filter byte per row, three
    bytes per pixel, and deflate's worst-case growth on incompressible data (zlib's
    deflateBound is under 1/4096 + 1/16384 + 13 bytes; IDAT chunk headers add 12 bytes per
    chunk of 64 KiB), rounded up to 1/256 of the raw size."""
    raw = height * (1 + 3 * width)
    return raw + raw // 256 + PNG_OVERHEAD_BYTES


def message_limits(limits: RequestLimits) -> MessageLimits:
    """The gate's bounds for a tier with these request limits (pure). e.g. the efficient
    defaults (2,000 characters, 4 images of 1024x1024, edits on): HTTP 4.1 MiB, gRPC 4.0 MiB,
    responses 24.3 MiB; the longest prompts the API allows (20,000 characters) with edits
    off: HTTP 485 KiB."""
    text = TEXT_INPUTS * limits.max_prompt_length
    image = image_bound(limits.max_width, limits.max_height)
    edit = limits.max_width * limits.max_height * EDIT_BYTES_PER_PIXEL if limits.allow_edits else 0
    return MessageLimits(
        http_request_bytes=text * JSON_BYTES_PER_CHARACTER + edit + REQUEST_OVERHEAD_BYTES,
        grpc_request_bytes=text * UTF8_BYTES_PER_CHARACTER + edit + REQUEST_OVERHEAD_BYTES,
        # Each BYTES element carries a 4-byte length prefix.
        response_bytes=limits.max_images_per_request * (image + 4) + RESPONSE_OVERHEAD_BYTES,
    )
