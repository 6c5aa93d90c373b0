"""The wire contract of the Triton model: input and output names, types, shapes, field names.

One table drives the runtime's rendered `config.pbtxt` and input parsing, the router's request
encoding and every error message, so the names cannot drift apart. Every input holds one value
per request (dims `[1]` after Triton's batch dimension, so a request sends shape `[1, 1]`); only
PROMPT is required. IMAGE and MASK carry raw pixels (an edit's input image and its mask, already
decoded, validated and resized by the router), so no image decoder runs on a GPU pod.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

TritonType = Literal["TYPE_STRING", "TYPE_INT32", "TYPE_INT64", "TYPE_FP32"]


@dataclass(frozen=True)
class InputSpec:
    """One Triton input and the request field it carries."""

    name: str
    """Triton input name (upper case, as the router sends it)."""
    field: str
    """Wire field name used in error messages (camelCase, as in the tier spec)."""
    data_type: TritonType
    optional: bool
    description: str
    binary: bool = False
    """A TYPE_STRING input holding raw bytes rather than UTF-8 text."""
    omitted_at_zero: bool = False
    """Left out of a request that holds 0 (its default): a tier runtime released before the
    input existed still serves every request that does not use it, and requests that do not
    use it still batch together."""

    @property
    def attribute(self) -> str:
        """The Python attribute of a request record carrying it (`negativePrompt` ->
        `negative_prompt`)."""
        return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), self.field)


PROMPT: Final = InputSpec("PROMPT", "prompt", "TYPE_STRING", False, "UTF-8 prompt")
NEGATIVE_PROMPT: Final = InputSpec(
    "NEGATIVE_PROMPT", "negativePrompt", "TYPE_STRING", True, "UTF-8 negative prompt"
)
STEPS: Final = InputSpec("STEPS", "steps", "TYPE_INT32", True, "denoising steps")
GUIDANCE_SCALE: Final = InputSpec(
    "GUIDANCE_SCALE", "guidanceScale", "TYPE_FP32", True, "classifier-free guidance scale"
)
WIDTH: Final = InputSpec("WIDTH", "width", "TYPE_INT32", True, "image width, multiple of 8")
HEIGHT: Final = InputSpec("HEIGHT", "height", "TYPE_INT32", True, "image height, multiple of 8")
SEED: Final = InputSpec("SEED", "seed", "TYPE_INT64", True, "random seed of the first image")
NUM_IMAGES: Final = InputSpec("NUM_IMAGES", "numImages", "TYPE_INT32", True, "images to generate")
OUTPUT_FORMAT: Final = InputSpec(
    "OUTPUT_FORMAT", "outputFormat", "TYPE_STRING", True, "png, jpeg or webp"
)
OUTPUT_COMPRESSION: Final = InputSpec(
    "OUTPUT_COMPRESSION", "outputCompression", "TYPE_INT32", True, "jpeg/webp quality, 0-100"
)
STRENGTH: Final = InputSpec(
    "STRENGTH", "strength", "TYPE_FP32", True, "an edit's strength: the share of steps redone"
)
IMAGE: Final = InputSpec(
    "IMAGE",
    "image",
    "TYPE_STRING",
    True,
    "an edit's input image: raw RGB bytes, height x width x 3, row-major; empty: no image",
    binary=True,
)
MASK: Final = InputSpec(
    "MASK",
    "mask",
    "TYPE_STRING",
    True,
    "an edit's mask: one byte per pixel, nonzero where the image changes; empty: no mask",
    binary=True,
)

DEADLINE_MS: Final = InputSpec(
    "DEADLINE_MS",
    "deadlineMs",
    "TYPE_INT64",
    True,
    "time left to answer, in ms from the request's arrival at the pod; 0: the tier's timeout",
)
PRIORITY: Final = InputSpec(
    "PRIORITY",
    "priority",
    "TYPE_INT32",
    True,
    "admission priority in a step-batched tier, -100 to 100: higher goes first",
)

PARTIAL_IMAGES: Final = InputSpec(
    "PARTIAL_IMAGES",
    "partialImages",
    "TYPE_INT32",
    True,
    "previews to stream before the answer, 0-3 (step-batched tiers; others send none)",
    omitted_at_zero=True,
)

INPUTS: Final[tuple[InputSpec, ...]] = (
    PROMPT,
    NEGATIVE_PROMPT,
    STEPS,
    GUIDANCE_SCALE,
    WIDTH,
    HEIGHT,
    SEED,
    NUM_IMAGES,
    OUTPUT_FORMAT,
    OUTPUT_COMPRESSION,
    STRENGTH,
    IMAGE,
    MASK,
    DEADLINE_MS,
    PRIORITY,
    PARTIAL_IMAGES,
)

IMAGES: Final = "IMAGES"
"""Output: BYTES, shape [1, numImages] per request; each element is one image file in the
request's output format."""
PROMPT_TOKENS: Final = "PROMPT_TOKENS"
"""Output: INT32, shape [1, 1] per request: the prompt and negative prompt tokens the model's
tokenizer reads (special tokens included, truncation applied), for the response's usage."""
STEPS_COMPUTED: Final = "STEPS_COMPUTED"
"""Output: INT32, shape [1, 1] per request: image-steps computed (images x denoising steps
run; an edit of strength s runs int(steps x s) steps), the usage's output measure."""
PARTIAL_INDEX: Final = "PARTIAL_INDEX"
"""Output: INT32, shape [1, 1] per response: -1 in the answer; in a preview (a non-final
response of a decoupled model, sent when PARTIAL_IMAGES asked for some) its 0-based index, with
IMAGES holding one preview file per image, PROMPT_TOKENS 0 and STEPS_COMPUTED the image-steps
computed so far."""
FINAL_INDEX: Final = -1
"""PARTIAL_INDEX of the answer itself."""
OUTPUTS: Final[tuple[tuple[str, TritonType, int], ...]] = (
    (IMAGES, "TYPE_STRING", -1),
    (PROMPT_TOKENS, "TYPE_INT32", 1),
    (STEPS_COMPUTED, "TYPE_INT32", 1),
    (PARTIAL_INDEX, "TYPE_INT32", 1),
)
"""Every output: name, type and its one dimension after the batch dimension."""


def requested_outputs(*, previews: bool) -> tuple[str, ...]:
    """The outputs a client asks for: PARTIAL_INDEX only with previews (a tier runtime released
    before it existed refuses a request naming it)."""
    return tuple(name for name, _, _ in OUTPUTS if previews or name != PARTIAL_INDEX)


OUTPUT_FORMATS: Final = ("png", "jpeg", "webp")
"""Image file formats the model encodes (OUTPUT_FORMAT's values)."""

DEFAULT_MODEL_NAME: Final = "duotone"

NUMPY_TYPES: Final[dict[TritonType, str]] = {
    "TYPE_STRING": "object",
    "TYPE_INT32": "int32",
    "TYPE_INT64": "int64",
    "TYPE_FP32": "float32",
}
"""numpy dtype name of each Triton type (BYTES travel as numpy object arrays)."""

CLIENT_TYPES: Final[dict[TritonType, str]] = {
    "TYPE_STRING": "BYTES",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP32": "FP32",
}
"""Datatype names that Triton's HTTP/gRPC clients use for each config type."""

REQUEST_SHAPE: Final = (1, 1)
"""Shape of every input of one request: Triton's batch dimension, then the model's dims [1]."""

DRAINING_REFUSAL: Final = "duotone-runtime is shutting down: new requests are refused"
"""How a tier pod's drain gate refuses new inference after SIGTERM (HTTP 503, gRPC
UNAVAILABLE): the request never ran, so the router retries it on another pod."""

DEADLINE_REFUSAL: Final = "duotone-runtime cannot meet the request's deadline"
"""How a step-batched tier pod refuses a request that could not finish by its deadline given the
work queued ahead of it, before computing any step: the router treats it like a full queue
(the tier is saturated for this request) and overflows it per its policy."""

MODEL_FAILED_REFUSAL: Final = (
    "duotone-runtime cannot serve: the model failed; new requests are refused"
)
"""How a tier pod's gate refuses new inference once its model reported that it can no longer
serve (HTTP 503, gRPC UNAVAILABLE): the request never ran, and the pod is being replaced."""


def input_values(request: object) -> dict[InputSpec, Any]:
    """Input -> the value of its attribute on `request` (any record with the inputs' names),
    without the inputs `omitted_at_zero` that hold 0."""
    values = {spec: getattr(request, spec.attribute) for spec in INPUTS}
    return {s: v for s, v in values.items() if not (s.omitted_at_zero and v == 0)}
