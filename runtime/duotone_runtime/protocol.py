"""The wire contract of the Triton model: input and output names, types and field names.

One table drives the rendered `config.pbtxt`, the model's input parsing, error messages and the
client helpers, so the names cannot drift apart. Every input holds one value per request
(dims `[1]` after Triton's batch dimension); only PROMPT is required.
"""

from __future__ import annotations

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

INPUTS: Final[tuple[InputSpec, ...]] = (
    PROMPT,
    NEGATIVE_PROMPT,
    STEPS,
    GUIDANCE_SCALE,
    WIDTH,
    HEIGHT,
    SEED,
    NUM_IMAGES,
)

IMAGES: Final = "IMAGES"
"""Output: BYTES, shape [1, numImages] per request; each element is one PNG file."""

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


def input_array(spec: InputSpec, value: Any) -> Any:
    """One request's value of `spec` as the [1, 1] numpy array a Triton client sends."""
    import numpy as np  # noqa: PLC0415 - clients have numpy; the launcher must not load it

    if spec.data_type == "TYPE_STRING":
        return np.array([[str(value).encode("utf-8")]], dtype=np.object_)
    return np.array([[value]], dtype=NUMPY_TYPES[spec.data_type])
