"""Checking a request against the tier's limits: defaults, bounds and messages naming fields."""

from __future__ import annotations

import pytest

from duotone_contracts.api.v1alpha1 import RequestDefaults, RequestLimits
from duotone_contracts.limits import GenerationRequest, RawRequest, RequestError, validate_request

pytestmark = pytest.mark.unit

DEFAULTS = RequestDefaults(steps=4, guidance_scale=0.0, width=512, height=512)
LIMITS = RequestLimits(
    max_steps=8,
    max_width=1024,
    max_height=768,
    max_guidance_scale=20.0,
    max_images_per_request=4,
    max_prompt_length=10,
)


def check(raw: RawRequest) -> GenerationRequest:
    return validate_request(raw, DEFAULTS, LIMITS, seed_if_missing=99)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            RawRequest("a cat"),
            GenerationRequest("a cat", "", 4, 0.0, 512, 512, 99, 1),
            id="omitted inputs take the tier defaults and the drawn seed",
        ),
        pytest.param(
            RawRequest("a cat", "dog", 8, 20.0, 1024, 768, 0, 4),
            GenerationRequest("a cat", "dog", 8, 20.0, 1024, 768, 0, 4),
            id="every value exactly at its limit is accepted",
        ),
        pytest.param(
            RawRequest("a cat", steps=1, width=64, height=64),
            GenerationRequest("a cat", "", 1, 0.0, 64, 64, 99, 1),
            id="smallest size and one step are accepted",
        ),
    ],
)
def test_valid_requests(raw: RawRequest, expected: GenerationRequest) -> None:
    assert check(raw) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            RawRequest("x", steps=12),
            "steps: 12 exceeds the tier's limits.maxSteps 8",
            id="steps over the limit",
        ),
        pytest.param(RawRequest("x", steps=0), "steps: 0 must be at least 1", id="zero steps"),
        pytest.param(
            RawRequest("x", width=100), "width: 100 must be a multiple of 8", id="odd width"
        ),
        pytest.param(
            RawRequest("x", width=32), "width: 32 must be at least 64", id="width below 64"
        ),
        pytest.param(
            RawRequest("x", height=776),
            "height: 776 exceeds the tier's limits.maxHeight 768",
            id="height over the limit",
        ),
        pytest.param(
            RawRequest("x", guidance_scale=20.5),
            "guidanceScale: 20.5 exceeds the tier's limits.maxGuidanceScale 20",
            id="guidance over the limit",
        ),
        pytest.param(
            RawRequest("x", guidance_scale=-1.0),
            "guidanceScale: -1 must be at least 0",
            id="negative guidance",
        ),
        pytest.param(
            RawRequest("x", guidance_scale=float("nan")),
            "guidanceScale: nan must be a finite number",
            id="guidance not a number",
        ),
        pytest.param(
            RawRequest("x", num_images=5),
            "numImages: 5 exceeds the tier's limits.maxImagesPerRequest 4",
            id="too many images",
        ),
        pytest.param(
            RawRequest("x", num_images=0), "numImages: 0 must be at least 1", id="zero images"
        ),
        pytest.param(RawRequest("   "), "prompt: must not be empty", id="blank prompt"),
        pytest.param(
            RawRequest("x" * 11),
            "prompt: 11 characters exceeds the tier's limits.maxPromptLength 10",
            id="prompt too long",
        ),
        pytest.param(
            RawRequest("x", negative_prompt="y" * 11),
            "negativePrompt: 11 characters exceeds the tier's limits.maxPromptLength 10",
            id="negative prompt too long",
        ),
        pytest.param(
            RawRequest("x", seed=-5), "seed: -5 must be between 0 and 2^63-1", id="negative seed"
        ),
    ],
)
def test_invalid_requests_name_the_field(raw: RawRequest, message: str) -> None:
    with pytest.raises(RequestError) as error:
        check(raw)
    assert str(error.value) == message


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(RequestError) as error:
        check(RawRequest("", steps=99, width=100))
    assert error.value.fields == ("prompt", "steps", "width")
    assert str(error.value) == (
        "prompt: must not be empty; steps: 99 exceeds the tier's limits.maxSteps 8; "
        "width: 100 must be a multiple of 8"
    )


@pytest.mark.parametrize(
    ("seed", "images", "seeds"),
    [
        pytest.param(5, 3, (5, 6, 7), id="image j uses seed + j"),
        pytest.param(2**63 - 1, 2, (2**63 - 1, 0), id="seeds wrap around at 2^63"),
    ],
)
def test_image_seeds(seed: int, images: int, seeds: tuple[int, ...]) -> None:
    request = GenerationRequest("x", "", 1, 0.0, 64, 64, seed, images)
    assert request.image_seeds() == seeds
