"""The request limits check: one request against its tier's defaults and limits (pure).

The router runs it before any backend call and the Triton model again on every request it
receives, so a request that bypasses the router is held to the same limits.

Every problem is reported with the wire field name so a client knows what to fix, e.g.
"steps: 12 exceeds the tier's limits.maxSteps 8". A request with several problems gets all of
them in one message, separated by "; ".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from duotone_contracts import triton
from duotone_contracts.api.v1alpha1 import (
    MIN_PIXELS,
    MIN_STEPS,
    PIXEL_MULTIPLE,
    RequestDefaults,
    RequestLimits,
)
from duotone_contracts.api.validation import FieldError

MAX_SEED = 2**63 - 1
COST_UNIT_PIXELS = 512 * 512
"""One unit of request cost is one denoising step of one 512x512 image."""


@dataclass(frozen=True)
class RawRequest:
    """One request's inputs as received; None for an input the client left out."""

    prompt: str
    negative_prompt: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    num_images: int | None = None

    def values(self) -> dict[triton.InputSpec, Any]:
        """Input -> value for every input this request sets (what a client sends)."""
        return {s: v for s, v in triton.input_values(self).items() if v is not None}


@dataclass(frozen=True)
class GenerationRequest:
    """A request with defaults applied and every value within the tier's limits."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    width: int
    height: int
    seed: int
    num_images: int

    def values(self) -> dict[triton.InputSpec, Any]:
        """Input -> value for all eight inputs, always: Triton batches only requests that send
        the same set of inputs."""
        return triton.input_values(self)

    def cost(self) -> float:
        """The work this request asks for, in image-steps at 512x512: images x steps x pixels
        / 512^2 (what `rateLimit.costPerMinutePerKey` counts).

        e.g. 4 flagship images of 50 steps at 1024x1024 cost 4 x 50 x 4 = 800; one efficient
        image of 4 steps at 512x512 costs 4.
        """
        return self.num_images * self.steps * self.width * self.height / COST_UNIT_PIXELS

    def image_seeds(self) -> tuple[int, ...]:
        """Seed of each image: image j of a request with seed s is the image of seed s + j."""
        return tuple((self.seed + j) % (MAX_SEED + 1) for j in range(self.num_images))


class RequestError(ValueError):
    """A request that cannot be served; the message names every offending field."""

    def __init__(self, problems: tuple[FieldError, ...]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))

    @property
    def fields(self) -> tuple[str, ...]:
        """Wire names of the offending fields, in input order."""
        return tuple(p.field for p in self.problems)


def _number(value: float) -> str:
    return f"{value:g}"


def _check_text(field: str, value: str, limit: int, *, required: bool) -> list[FieldError]:
    if required and not value.strip():
        return [FieldError(field, "must not be empty")]
    if len(value) > limit:
        return [
            FieldError(
                field,
                f"{len(value)} characters exceeds the tier's limits.maxPromptLength {limit}",
            )
        ]
    return []


def _check_int(field: str, value: int, low: int, limit: int, limit_name: str) -> list[FieldError]:
    if value < low:
        return [FieldError(field, f"{value} must be at least {low}")]
    if value > limit:
        return [FieldError(field, f"{value} exceeds the tier's limits.{limit_name} {limit}")]
    return []


def _check_pixels(field: str, value: int, limit: int, limit_name: str) -> list[FieldError]:
    if value % PIXEL_MULTIPLE != 0:
        return [FieldError(field, f"{value} must be a multiple of {PIXEL_MULTIPLE}")]
    return _check_int(field, value, MIN_PIXELS, limit, limit_name)


def _check_seed(value: int) -> list[FieldError]:
    if not 0 <= value <= MAX_SEED:
        return [FieldError(triton.SEED.field, f"{value} must be between 0 and 2^63-1")]
    return []


def _check_guidance(value: float, limit: float) -> list[FieldError]:
    field = triton.GUIDANCE_SCALE.field
    if not math.isfinite(value):
        return [FieldError(field, f"{value} must be a finite number")]
    if value < 0:
        return [FieldError(field, f"{_number(value)} must be at least 0")]
    if value > limit:
        return [
            FieldError(
                field,
                f"{_number(value)} exceeds the tier's limits.maxGuidanceScale {_number(limit)}",
            )
        ]
    return []


def validate_request(
    raw: RawRequest,
    defaults: RequestDefaults,
    limits: RequestLimits,
    *,
    seed_if_missing: int,
) -> GenerationRequest:
    """Apply the tier's defaults and check every field; raises RequestError naming the fields.

    `seed_if_missing` is the seed of a request that names none (the caller draws it, so this
    function stays pure).
    """
    steps = defaults.steps if raw.steps is None else raw.steps
    guidance = defaults.guidance_scale if raw.guidance_scale is None else raw.guidance_scale
    width = defaults.width if raw.width is None else raw.width
    height = defaults.height if raw.height is None else raw.height
    num_images = 1 if raw.num_images is None else raw.num_images
    seed = seed_if_missing if raw.seed is None else raw.seed
    negative = raw.negative_prompt or ""

    problems = [
        *_check_text(triton.PROMPT.field, raw.prompt, limits.max_prompt_length, required=True),
        *_check_text(
            triton.NEGATIVE_PROMPT.field, negative, limits.max_prompt_length, required=False
        ),
        *_check_int(triton.STEPS.field, steps, MIN_STEPS, limits.max_steps, "maxSteps"),
        *_check_guidance(guidance, limits.max_guidance_scale),
        *_check_pixels(triton.WIDTH.field, width, limits.max_width, "maxWidth"),
        *_check_pixels(triton.HEIGHT.field, height, limits.max_height, "maxHeight"),
        *_check_seed(seed),
        *_check_int(
            triton.NUM_IMAGES.field,
            num_images,
            1,
            limits.max_images_per_request,
            "maxImagesPerRequest",
        ),
    ]
    if problems:
        raise RequestError(tuple(problems))
    return GenerationRequest(
        prompt=raw.prompt,
        negative_prompt=negative,
        steps=steps,
        guidance_scale=float(guidance),
        width=width,
        height=height,
        seed=seed,
        num_images=num_images,
    )
