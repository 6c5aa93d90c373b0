"""The gate's byte bounds, derived from a tier's request limits."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from duotone_contracts.api.v1alpha1 import FlagshipRequestLimits, RequestLimits
from duotone_runtime.message_limits import message_limits, png_bound

pytestmark = pytest.mark.unit

MiB = 1 << 20


@pytest.mark.parametrize(
    ("limits", "http", "grpc", "response"),
    [
        pytest.param(RequestLimits(), 64_384, 32_384, 12_963_872, id="efficient defaults"),
        pytest.param(FlagshipRequestLimits(), 64_384, 32_384, 28_756_008, id="flagship defaults"),
        pytest.param(
            RequestLimits(max_prompt_length=20000, max_images_per_request=16),
            496_384,
            176_384,
            51_658_880,
            id="longest prompts and most images the API allows",
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
    largest = message_limits(RequestLimits(max_prompt_length=20000, max_images_per_request=16))
    assert largest.http_request_bytes < 1 * MiB, "was 1 GiB"
    assert largest.grpc_request_bytes < 1 * MiB, "was unlimited"


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
