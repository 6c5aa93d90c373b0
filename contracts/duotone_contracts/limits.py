"""The request limits check: one request against its tier's defaults and limits (pure).

The router runs it before any backend call and the Triton model again on every request it
receives, so a request that bypasses the router is held to the same limits.

Every problem is reported with the wire field name so a client knows what to fix, e.g.
"steps: 12 exceeds the tier's limits.maxSteps 8". A request with several problems gets all of
them in one message, separated by "; ".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
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
DEFAULT_OUTPUT_FORMAT = "png"
DEFAULT_OUTPUT_COMPRESSION = 100
"""OpenAI's default: jpeg and webp at full quality (PNG is lossless and ignores it)."""
IMAGE_TO_IMAGE_STRENGTH = 0.8
"""An edit without a mask redoes the last 80% of the steps: the result keeps the input's
composition. An inpainting edit (with a mask) redoes every step inside the mask (1.0)."""
INPAINT_STRENGTH = 1.0
RGB_CHANNELS = 3
MAX_DEADLINE_MS = 3_600_000
"""The longest deadline a request may carry (the tier's requestTimeoutMs bound)."""
PRIORITY_RANGE = (-100, 100)
"""A request's admission priority: higher goes first in a step-batched tier; 0 is the default."""
MAX_PARTIAL_IMAGES = 3
"""Most previews a streamed request may ask for (OpenAI's partial_images bound)."""


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
    output_format: str | None = None
    output_compression: int | None = None
    strength: float | None = None
    image: bytes | None = field(default=None, repr=False)
    mask: bytes | None = field(default=None, repr=False)
    deadline_ms: int | None = None
    priority: int | None = None
    partial_images: int | None = None

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
    output_format: str = DEFAULT_OUTPUT_FORMAT
    output_compression: int = DEFAULT_OUTPUT_COMPRESSION
    strength: float = INPAINT_STRENGTH
    image: bytes = field(default=b"", repr=False)
    """An edit's input image as raw RGB (height x width x 3); empty for a generation."""
    mask: bytes = field(default=b"", repr=False)
    """An edit's mask, one byte per pixel (nonzero: change it); empty: no mask."""
    deadline_ms: int = 0
    """Time left to answer it, in ms from its arrival at the pod; 0: the tier's timeout."""
    priority: int = 0
    """Admission priority in a step-batched tier: higher goes first."""
    partial_images: int = 0
    """Previews to send before the answer (a step-batched tier's streamed request)."""

    def values(self) -> dict[triton.InputSpec, Any]:
        """Input -> value for every input (but those `omitted_at_zero` that hold 0), always:
        Triton batches only requests that send the same set of inputs."""
        return triton.input_values(self)

    @property
    def mode(self) -> str:
        """ "generate", "image" (image-to-image) or "inpaint" (an image and a mask)."""
        if not self.image:
            return "generate"
        return "inpaint" if self.mask else "image"

    def steps_run(self) -> int:
        """Denoising steps this request computes per image: an edit of strength s starts
        part-way and runs int(steps x s) of them (diffusers' image-to-image rule)."""
        if not self.image:
            return self.steps
        return min(self.steps, int(self.steps * self.strength))

    def image_steps(self) -> int:
        """Image-steps computed: images x steps run (the usage's output measure)."""
        return self.num_images * self.steps_run()

    def cost(self) -> float:
        """The work this request asks for, in image-steps at 512x512: images x steps run x
        pixels / 512^2 (what `rateLimit.costPerMinutePerKey` counts).

        e.g. 4 flagship images of 50 steps at 1024x1024 cost 4 x 50 x 4 = 800; one efficient
        image of 4 steps at 512x512 costs 4.
        """
        return self.image_steps() * self.width * self.height / COST_UNIT_PIXELS

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


def _check_deadline(value: int) -> list[FieldError]:
    if not 0 <= value <= MAX_DEADLINE_MS:
        return [
            FieldError(triton.DEADLINE_MS.field, f"{value} must be between 0 and {MAX_DEADLINE_MS}")
        ]
    return []


def _check_priority(value: int) -> list[FieldError]:
    low, high = PRIORITY_RANGE
    if not low <= value <= high:
        return [FieldError(triton.PRIORITY.field, f"{value} must be between {low} and {high}")]
    return []


def _check_partial_images(value: int) -> list[FieldError]:
    if not 0 <= value <= MAX_PARTIAL_IMAGES:
        return [
            FieldError(
                triton.PARTIAL_IMAGES.field, f"{value} must be between 0 and {MAX_PARTIAL_IMAGES}"
            )
        ]
    return []


def _check_output(output_format: str, compression: int) -> list[FieldError]:
    problems = []
    if output_format not in triton.OUTPUT_FORMATS:
        problems.append(
            FieldError(
                triton.OUTPUT_FORMAT.field,
                f"{output_format[:20]!r} must be one of {', '.join(triton.OUTPUT_FORMATS)}",
            )
        )
    if not 0 <= compression <= 100:
        problems.append(
            FieldError(triton.OUTPUT_COMPRESSION.field, f"{compression} must be between 0 and 100")
        )
    return problems


def _check_edit(
    raw: RawRequest, limits: RequestLimits, size: tuple[int, int], strength: float, steps: int
) -> list[FieldError]:
    """An edit's image, mask and strength against the output size and the tier's limits."""
    image, mask = raw.image or b"", raw.mask or b""
    width, height = size
    if not math.isfinite(strength) or not 0 < strength <= 1:
        return [FieldError(triton.STRENGTH.field, f"{strength} must be above 0 and at most 1")]
    if not image:
        if mask:
            return [FieldError(triton.MASK.field, "a mask needs an image to edit")]
        return []
    if not limits.allow_edits:
        return [FieldError(triton.IMAGE.field, "edits are off: the tier's limits.allowEdits")]
    problems = []
    if len(image) != width * height * RGB_CHANNELS:
        problems.append(
            FieldError(
                triton.IMAGE.field,
                f"{len(image)} bytes is not a {width}x{height} RGB image "
                f"({width * height * RGB_CHANNELS} bytes)",
            )
        )
    if mask and len(mask) != width * height:
        problems.append(
            FieldError(
                triton.MASK.field,
                f"{len(mask)} bytes is not a {width}x{height} mask ({width * height} bytes)",
            )
        )
    if int(steps * strength) < 1:
        problems.append(
            FieldError(
                triton.STRENGTH.field,
                f"{strength:g} x {steps} steps computes no step: raise steps or strength",
            )
        )
    return problems


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
    output_format = raw.output_format or DEFAULT_OUTPUT_FORMAT
    compression = (
        DEFAULT_OUTPUT_COMPRESSION if raw.output_compression is None else raw.output_compression
    )
    image, mask = raw.image or b"", raw.mask or b""
    default_strength = IMAGE_TO_IMAGE_STRENGTH if image and not mask else INPAINT_STRENGTH
    strength = default_strength if raw.strength is None else raw.strength
    deadline_ms = raw.deadline_ms or 0
    priority = raw.priority or 0
    partial_images = raw.partial_images or 0

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
        *_check_output(output_format, compression),
        *_check_edit(raw, limits, (width, height), strength, steps),
        *_check_deadline(deadline_ms),
        *_check_priority(priority),
        *_check_partial_images(partial_images),
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
        output_format=output_format,
        output_compression=compression,
        strength=float(strength),
        image=image,
        mask=mask,
        deadline_ms=deadline_ms,
        priority=priority,
        partial_images=partial_images,
    )
