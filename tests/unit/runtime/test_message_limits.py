"""The gate's byte bounds, derived from a tier's request limits."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from duotone_contracts.api.v1alpha1 import FlagshipRequestLimits, RequestLimits
from duotone_runtime.message_limits import image_bound, message_limits, png_bound

pytestmark = pytest.mark.unit

MiB = 1 << 20


@pytest.mark.parametrize(
    ("limits", "http", "grpc", "response"),
    [
        pytest.param(RequestLimits(), 4_258_688, 4_226_688, 25_493_520, id="efficient defaults"),
        pytest.param(
            FlagshipRequestLimits(), 9_501_568, 9_469_568, 56_950_800, id="flagship defaults"
        ),
        pytest.param(
            RequestLimits(max_prompt_length=20000, max_images_per_request=16, allow_edits=False),
            496_384,
            176_384,
            101_777_472,
            id="longest prompts and most images the API allows, edits off",
        ),
    ],
)
def test_message_limits(limits: RequestLimits, http: int, grpc: int, response: int) -> None:
    bounds = message_limits(limits)
    assert (bounds.http_request_bytes, bounds.grpc_request_bytes, bounds.response_bytes) == (
        http,
        grpc,
        response,
    )


def test_requests_stay_small_and_far_below_the_old_limits() -> None:
    text_only = RequestLimits(max_prompt_length=20000, max_images_per_request=16, allow_edits=False)
    largest = message_limits(text_only)
    assert largest.http_request_bytes < 1 * MiB, "was 1 GiB"
    assert largest.grpc_request_bytes < 1 * MiB, "was unlimited"


def test_edits_add_one_raw_image_and_its_mask_of_the_largest_size() -> None:
    limits = RequestLimits(max_width=1024, max_height=512)
    without = message_limits(limits.model_copy(update={"allow_edits": False}))
    edits = message_limits(limits)
    assert edits.grpc_request_bytes - without.grpc_request_bytes == 1024 * 512 * 4
    assert edits.http_request_bytes - without.http_request_bytes == 1024 * 512 * 4


@pytest.mark.parametrize(
    ("output_format", "options"),
    [("JPEG", {"quality": 100, "subsampling": 0}), ("WEBP", {"quality": 100, "method": 4})],
)
def test_lossy_formats_at_full_quality_fit_the_image_bound(
    output_format: str, options: dict[str, int]
) -> None:
    """Noise at quality 100 is the largest a JPEG (4:4:4, as `execution.encode_image` writes
    it from quality 90 on) or a WebP gets; both stay under `image_bound`."""
    pixels = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=output_format, **options)
    assert len(buffer.getvalue()) > 512 * 512  # noise: it did not compress away
    assert len(buffer.getvalue()) <= image_bound(512, 512)


def test_the_longest_valid_json_request_fits() -> None:
    """Every character an astral one written as an escaped surrogate pair: the worst JSON."""
    limits = RequestLimits(max_prompt_length=500)
    text = "\U0001f600" * limits.max_prompt_length
    inputs = [
        {"name": name, "shape": [1, 1], "datatype": "BYTES", "data": [text]}
        for name in ("PROMPT", "NEGATIVE_PROMPT")
    ] + [
        {"name": name, "shape": [1, 1], "datatype": "INT32", "data": [2147483647]}
        for name in ("STEPS", "WIDTH", "HEIGHT", "NUM_IMAGES", "SEED", "GUIDANCE_SCALE")
    ]
    body = json.dumps({"id": "x" * 128, "inputs": inputs, "outputs": [{"name": "IMAGES"}]})
    assert len(body.encode()) <= message_limits(limits).http_request_bytes


@pytest.mark.parametrize(("width", "height"), [(64, 64), (512, 256), (1024, 1024)])
def test_png_bound_holds_for_pure_noise(width: int, height: int) -> None:
    """Random pixels do not compress: the worst case for the runtime's PNG encoder (written
    like `execution.encode_png`, whose module imports torch)."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    png = buffer.getvalue()
    assert Image.open(io.BytesIO(png)).size == (width, height)
    assert len(png) <= png_bound(width, height)
    assert png_bound(width, height) < 1.01 * len(png) + 70_000, "the bound is not loose either"
