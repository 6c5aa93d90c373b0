"""Checking a request against the tier's limits: defaults, bounds and messages naming fields."""

from __future__ import annotations

import pytest

from duotone_contracts import triton
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


def _edit(**fields: object) -> RawRequest:
    """A 64x64 edit: raw RGB image of the right size, and whatever else is given."""
    values: dict[str, object] = {"width": 64, "height": 64, "image": bytes(64 * 64 * 3)}
    values.update(fields)
    return RawRequest("x", **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "mode", "strength", "steps_run"),
    [
        pytest.param(RawRequest("x", steps=8), "generate", 1.0, 8, id="a generation runs all"),
        pytest.param(_edit(steps=5), "image", 0.8, 4, id="image-to-image redoes 80%"),
        pytest.param(
            _edit(steps=5, mask=bytes(64 * 64)), "inpaint", 1.0, 5, id="inpainting redoes all"
        ),
        pytest.param(_edit(steps=8, strength=0.3), "image", 0.3, 2, id="strength given"),
    ],
)
def test_edit_modes_and_steps(raw: RawRequest, mode: str, strength: float, steps_run: int) -> None:
    request = check(raw)
    assert (request.mode, request.strength, request.steps_run()) == (mode, strength, steps_run)
    assert request.image_steps() == steps_run
    assert request.cost() == steps_run * request.width * request.height / 512**2


def test_output_defaults_are_full_quality_png() -> None:
    request = check(RawRequest("x"))
    assert (request.output_format, request.output_compression) == ("png", 100)
    chosen = check(RawRequest("x", output_format="webp", output_compression=0))
    assert (chosen.output_format, chosen.output_compression) == ("webp", 0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            RawRequest("x", output_format="gif"),
            "outputFormat: 'gif' must be one of png, jpeg, webp",
            id="unknown format",
        ),
        pytest.param(
            RawRequest("x", output_compression=101),
            "outputCompression: 101 must be between 0 and 100",
            id="compression over 100",
        ),
        pytest.param(
            _edit(image=bytes(10)),
            "image: 10 bytes is not a 64x64 RGB image (12288 bytes)",
            id="image of the wrong size",
        ),
        pytest.param(
            _edit(mask=bytes(5)),
            "mask: 5 bytes is not a 64x64 mask (4096 bytes)",
            id="mask of the wrong size",
        ),
        pytest.param(
            RawRequest("x", mask=bytes(5)), "mask: a mask needs an image to edit", id="mask alone"
        ),
        pytest.param(
            _edit(strength=1.5), "strength: 1.5 must be above 0 and at most 1", id="strength > 1"
        ),
        pytest.param(
            _edit(steps=2, strength=0.3),
            "strength: 0.3 x 2 steps computes no step: raise steps or strength",
            id="edit computing no step",
        ),
    ],
)
def test_invalid_outputs_and_edits_name_the_field(raw: RawRequest, message: str) -> None:
    with pytest.raises(RequestError) as error:
        check(raw)
    assert str(error.value) == message


def test_edits_can_be_turned_off_per_tier() -> None:
    closed = RequestLimits(allow_edits=False)
    with pytest.raises(RequestError) as error:
        validate_request(_edit(), DEFAULTS, closed, seed_if_missing=1)
    assert str(error.value) == "image: edits are off: the tier's limits.allowEdits"
    assert validate_request(RawRequest("x"), DEFAULTS, closed, seed_if_missing=1).mode == (
        "generate"
    )


def test_partial_images_are_checked_and_sent_only_when_asked_for() -> None:
    """0-3 previews; a request without previews leaves PARTIAL_IMAGES out, so tier runtimes
    from before it serve it and such requests batch together as before; only a client asking
    for previews asks for PARTIAL_INDEX back."""
    with pytest.raises(RequestError) as error:
        check(RawRequest("x", partial_images=4))
    assert str(error.value) == "partialImages: 4 must be between 0 and 3"
    plain = check(RawRequest("x"))
    streamed = check(RawRequest("x", partial_images=2))
    assert triton.PARTIAL_IMAGES not in plain.values()
    assert streamed.values()[triton.PARTIAL_IMAGES] == 2
    assert set(streamed.values()) - set(plain.values()) == {triton.PARTIAL_IMAGES}
    assert triton.PARTIAL_INDEX not in triton.requested_outputs(previews=False)
    assert triton.requested_outputs(previews=True) == tuple(n for n, _, _ in triton.OUTPUTS)
