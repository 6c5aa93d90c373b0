"""The OpenAI-compatible Images API: request parsing, responses and the OpenAPI document.

Pure: bytes and typed values in, typed values out. Field problems are refused (`Refused`) with
the field named, e.g. `size: 96x100 ... height: 100 must be a multiple of 8` -> INVALID_VALUE
with param "height", which the HTTP layer answers 422 in the OpenAI error shape.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from duotone_contracts.api.v1alpha1 import TIER_NAMES, TierName
from duotone_contracts.limits import (
    MAX_PARTIAL_IMAGES,
    GenerationRequest,
    RawRequest,
    RequestError,
    validate_request,
)
from duotone_contracts.routing_table import TierRoute
from duotone_router.edits import EditImages
from duotone_router.policy.reasons import Reason, Refused

GENERATIONS_PATH = "/v1/images/generations"
EDITS_PATH = "/v1/images/edits"
MODELS_PATH = "/v1/models"
TIER_HEADER = "X-Duotone-Tier"
DEGRADED_HEADER = "X-Duotone-Degraded"
ROUTE_HEADER = "X-Duotone-Route"
REQUEST_ID_HEADER = "X-Request-Id"

Quality = Literal["auto", "standard", "hd", "low", "medium", "high"]
QUALITY_TIERS: Mapping[str, TierName] = {
    "standard": "efficient",
    "low": "efficient",
    "medium": "efficient",
    "hd": "flagship",
    "high": "flagship",
}
"""OpenAI quality -> tier ("auto" leaves the choice to the split)."""

SIZE_PATTERN = r"^(auto|[1-9][0-9]{1,4}x[1-9][0-9]{1,4})$"


class ImagesRequest(BaseModel):
    """`POST /v1/images/generations`: OpenAI's fields plus Duotone's extensions."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: str = Field(description="What to draw.", max_length=20000)
    model: str | None = Field(
        None, max_length=256, description="A tier name from /v1/models; omit to let Duotone pick."
    )
    n: int | None = Field(None, ge=1, le=16, description="Number of images (tier limits apply).")
    size: str | None = Field(
        None, pattern=SIZE_PATTERN, description="WIDTHxHEIGHT in pixels, or auto (tier default)."
    )
    response_format: Literal["b64_json"] | None = Field(
        None, description="Only b64_json: images are returned inline, never stored."
    )
    output_format: Literal["png", "jpeg", "webp"] | None = Field(
        None, description="Image file format (default png)."
    )
    output_compression: int | None = Field(
        None, ge=0, le=100, description="jpeg/webp quality 0-100 (default 100); png ignores it."
    )
    background: Literal["auto", "opaque", "transparent"] | None = Field(
        None, description="auto or opaque; transparent is refused (the tiers draw opaque RGB)."
    )
    moderation: Literal["auto", "low"] | None = Field(
        None, description="Accepted; the endpoint's blocklist applies either way."
    )
    stream: bool | None = Field(
        None,
        description="Answer as Server-Sent Events: partial_images previews, then the image "
        "(one image per streamed request: n 1).",
    )
    partial_images: int | None = Field(
        None,
        ge=0,
        le=MAX_PARTIAL_IMAGES,
        description="Previews while streaming, 0-3 (step-batched tiers send them; a request of "
        "few steps, or one served by a request-batched tier, may get fewer). Ignored unless "
        "stream is true.",
    )
    quality: Quality | None = Field(
        None, description="standard/low/medium -> efficient tier; hd/high -> flagship; auto."
    )
    style: Literal["vivid", "natural"] | None = Field(None, description="Accepted and ignored.")
    user: str | None = Field(None, max_length=256, description="End-user id; accepted, ignored.")
    tier: TierName | None = Field(None, description="Duotone: the tier to serve the request.")
    steps: int | None = Field(None, description="Duotone: denoising steps (tier limits apply).")
    seed: int | None = Field(None, description="Duotone: seed; same seed, same image.")
    negative_prompt: str | None = Field(
        None, max_length=20000, description="Duotone: what not to draw."
    )
    guidance_scale: float | None = Field(
        None, allow_inf_nan=False, description="Duotone: guidance scale (a finite number)."
    )


class EditRequest(ImagesRequest):
    """`POST /v1/images/edits`: the form fields besides the files (`image`, `mask`). Form
    values arrive as text, so numbers and booleans are read from their text."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    strength: float | None = Field(
        None,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Duotone: share of the steps redone (default 0.8, 1.0 with a mask).",
    )


MAX_JSON_CONTAINERS = 64
"""Most arrays and objects a body may hold (outside strings). A request is one flat object;
the bound also bounds nesting, far below the depth where json.loads recurses out of stack
(RecursionError near 1,000: 30,000 `[` fit in a 64 KiB body)."""

MAX_JSON_MEMBERS = 64
"""Most values a body may hold (commas outside strings, plus one): a request has at most 15
members, and each parsed value (and each validation error about it) costs hundreds of bytes,
so a body of thousands of tiny values is refused unparsed."""

MAX_NUMBER_CHARS = 100
"""Longest number literal parsed. An int64 seed has 19 digits; a 5,000-digit integer would hit
Python's int-digits limit (ValueError) and cost quadratic time below it."""

MAX_LISTED_PROBLEMS = 5
"""Problems named in one message (a body may have dozens of unknown fields)."""

MAX_PARAM_CHARS = 100
"""Longest field name echoed back (a client's unknown key may be 60 KiB long)."""

_STRING = re.compile(r'"[^"]*(?:"|\Z)')
"""A JSON string literal once its escapes are gone, or an unterminated one running to the end
of the body (so every quote is scanned once: the scan stays linear on unclosed strings)."""


class LongNumber:
    """A number literal longer than MAX_NUMBER_CHARS, kept unparsed so that the field holding
    it is named by the model's validation (a number of any type fails every field)."""

    def __init__(self, literal: str) -> None:
        self.length = len(literal)

    def __repr__(self) -> str:
        return f"<number of {self.length} characters>"


class _NonStandardJSONError(ValueError):
    pass


def _parse_int(literal: str) -> int | LongNumber:
    return LongNumber(literal) if len(literal) > MAX_NUMBER_CHARS else int(literal)


def _parse_float(literal: str) -> float | LongNumber:
    return LongNumber(literal) if len(literal) > MAX_NUMBER_CHARS else float(literal)


def _refuse_constant(name: str) -> None:
    raise _NonStandardJSONError(f"{name} is not valid JSON (numbers must be finite)")


def _too_many(what: str) -> Refused:
    return Refused(Reason.INVALID_JSON, f"the body holds {what}; a request is one flat JSON object")


def _check_shape(text: str) -> None:
    """Refuse, before parsing, a body with too many arrays, objects or values outside its
    strings. Linear and allocation-free beyond one copy of the body: escapes are dropped
    (so a quote inside a string cannot end it), then the text between string literals is
    counted; the loop ends after at most 2 x MAX_JSON_MEMBERS strings (a body with more has
    more values than that, or is not JSON)."""
    plain = text.replace("\\\\", "").replace('\\"', "")
    containers, commas, outside = 0, 0, 0
    for strings, literal in enumerate(_STRING.finditer(plain), start=1):
        containers += plain.count("[", outside, literal.start())
        containers += plain.count("{", outside, literal.start())
        commas += plain.count(",", outside, literal.start())
        outside = literal.end()
        if strings > 2 * MAX_JSON_MEMBERS:
            raise _too_many(f"more than {2 * MAX_JSON_MEMBERS} strings")
    containers += plain.count("[", outside) + plain.count("{", outside)
    commas += plain.count(",", outside)
    if containers > MAX_JSON_CONTAINERS:
        raise _too_many(
            f"{containers} arrays and objects (at most {MAX_JSON_CONTAINERS} are parsed)"
        )
    if commas + 1 > MAX_JSON_MEMBERS:
        raise _too_many(f"{commas + 1} values (at most {MAX_JSON_MEMBERS} are parsed)")


def _field_name(loc: Sequence[int | str]) -> str:
    name = ".".join(str(part) for part in loc) or "body"
    return name if len(name) <= MAX_PARAM_CHARS else name[:MAX_PARAM_CHARS] + "..."


def _problem(problem: Mapping[str, Any]) -> str:
    given = problem.get("input")
    if isinstance(given, LongNumber):
        return f"a number of {given.length} characters (at most {MAX_NUMBER_CHARS})"
    if problem["type"] == "string_unicode":
        return "must be valid Unicode text (a lone surrogate such as \\ud800 cannot be encoded)"
    return str(problem["msg"])


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object: UTF-8, standard JSON only (no NaN or Infinity), few and
    shallow arrays and objects, number literals short enough to parse in linear time.
    Refused (INVALID_JSON) otherwise; an over-long number is kept as a LongNumber for the
    field check to name."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Refused(Reason.INVALID_JSON, f"the body is not UTF-8: {error}") from error
    _check_shape(text)
    try:
        document = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_refuse_constant,
        )
    except ValueError as error:  # JSONDecodeError, a NaN/Infinity constant
        raise Refused(Reason.INVALID_JSON, f"the body is not valid JSON: {error}") from error
    if not isinstance(document, dict):
        raise Refused(Reason.INVALID_JSON, "the body must be a JSON object")
    return document


def parse_images_request(body: bytes) -> ImagesRequest:
    """The JSON body as a request; refused for malformed JSON, or naming the first bad field
    (a string the model cannot encode, such as a lone surrogate, is a bad field too)."""
    return _validated(ImagesRequest, parse_json_object(body))


def parse_edit_request(fields: Mapping[str, str]) -> EditRequest:
    """An edit's text fields as a request, naming the first bad field."""
    return _validated(EditRequest, dict(fields))


M = TypeVar("M", bound=ImagesRequest)


def _validated(model: type[M], document: dict[str, Any]) -> M:
    try:
        request = model.model_validate(document)
    except ValidationError as error:
        problems = error.errors(include_url=False)
        first = _field_name(problems[0]["loc"])
        listed = [f"{_field_name(p['loc'])}: {_problem(p)}" for p in problems]
        if len(listed) > MAX_LISTED_PROBLEMS:
            listed[MAX_LISTED_PROBLEMS:] = [
                f"and {len(listed) - MAX_LISTED_PROBLEMS} more problems"
            ]
        raise Refused(Reason.INVALID_VALUE, "; ".join(listed), param=first) from error
    _check_supported(request)
    return request


def _check_supported(request: ImagesRequest) -> None:
    """Refuse, naming the field, what the tiers cannot do."""
    if request.background == "transparent":
        raise Refused(
            Reason.INVALID_VALUE,
            "background: transparent is not supported: the tiers draw opaque RGB images "
            "(use opaque or auto)",
            param="background",
        )
    if request.stream and request.n is not None and request.n > 1:
        raise Refused(
            Reason.INVALID_VALUE,
            f"n: a streamed request makes one image (its events carry no image index); send n 1 "
            f"or stream false, not n {request.n}",
            param="n",
        )


def requested_tier(request: ImagesRequest, served: Sequence[TierName]) -> TierName | None:
    """The tier the client names through `tier`, `model` or `quality` (in that order)."""
    if request.tier is not None:
        return request.tier
    if request.model is not None and request.model != "auto":
        if request.model in TIER_NAMES:
            return request.model
        raise Refused(
            Reason.UNKNOWN_MODEL,
            f"model: {request.model!r} does not exist; available: {', '.join(served)}",
            param="model",
        )
    if request.quality is not None:
        return QUALITY_TIERS.get(request.quality)
    return None


def _size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size == "auto":
        return None, None
    width, height = size.split("x")
    return int(width), int(height)


_FIELD_PARAMS = {
    "numImages": "n",
    "negativePrompt": "negative_prompt",
    "guidanceScale": "guidance_scale",
    "outputFormat": "output_format",
    "outputCompression": "output_compression",
    "partialImages": "partial_images",
}
"""The runtime's wire names -> this API's parameter names (the rest are the same)."""


def _check_edit_limits(edit: EditImages, tier: TierRoute) -> None:
    limits = tier.limits
    if edit.images_sent > limits.max_input_images:
        raise Refused(
            Reason.INVALID_VALUE,
            f"image: {edit.images_sent} files exceed the tier's limits.maxInputImages "
            f"{limits.max_input_images}",
            param="image",
        )
    if edit.largest_file_bytes > limits.max_input_image_bytes:
        raise Refused(
            Reason.INVALID_VALUE,
            f"image: a file of {edit.largest_file_bytes} bytes exceeds the tier's "
            f"limits.maxInputImageBytes {limits.max_input_image_bytes}",
            param="image",
        )


def generation_request(
    request: ImagesRequest,
    tier: TierRoute,
    *,
    seed_if_missing: int,
    edit: EditImages | None = None,
) -> GenerationRequest:
    """Apply the tier's defaults and limits; refused naming the field in the API's words.
    An edit's files were decoded and resized already (`edits.decode_edit`); its size is the
    output size."""
    width, height = _size(request.size)
    if edit is not None:
        _check_edit_limits(edit, tier)
        width, height = edit.width, edit.height
    raw = RawRequest(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        width=width,
        height=height,
        seed=request.seed,
        num_images=request.n,
        output_format=request.output_format,
        output_compression=request.output_compression,
        strength=request.strength if isinstance(request, EditRequest) else None,
        image=None if edit is None else edit.image,
        mask=None if edit is None else edit.mask,
        partial_images=request.partial_images if request.stream else None,
    )
    try:
        return validate_request(raw, tier.defaults, tier.limits, seed_if_missing=seed_if_missing)
    except RequestError as error:
        params = [_FIELD_PARAMS.get(f, f) for f in error.fields]
        message = "; ".join(
            f"{param}: {p.message}" for param, p in zip(params, error.problems, strict=True)
        )
        if any(p in ("width", "height") for p in params):
            message += f" (size {request.size!r})"
        raise Refused(Reason.INVALID_VALUE, message, param=params[0]) from error


TIER_QUALITY: Mapping[TierName, str] = {"efficient": "medium", "flagship": "high"}
"""The response's `quality`: the quality of the tier that served the request."""


def usage(prompt_tokens: int, image_steps: int) -> dict[str, Any]:
    """The response's `usage`, in OpenAI's shape: input tokens are the prompt's tokens as the
    tier's tokenizer counts them (input images are not tokenized: image_tokens 0); output
    tokens are image-steps computed (images x denoising steps run)."""
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0},
        "output_tokens": image_steps,
        "total_tokens": prompt_tokens + image_steps,
    }


def images_response(
    created: int,
    served: GenerationRequest,
    tier: TierName,
    files: Sequence[bytes],
    *,
    prompt_tokens: int,
    image_steps: int,
) -> dict[str, Any]:
    """The OpenAI response body: one b64_json entry per image, what was made, and usage."""
    return {
        "created": created,
        "data": [{"b64_json": base64.b64encode(f).decode("ascii")} for f in files],
        "background": "opaque",
        "output_format": served.output_format,
        "quality": TIER_QUALITY[tier],
        "size": f"{served.width}x{served.height}",
        "usage": usage(prompt_tokens, image_steps),
    }


StreamKind = Literal["image_generation", "image_edit"]
"""The prefix of a streamed answer's event types: generations or edits."""


def _described(
    created: int, served: GenerationRequest, tier: TierName, file: bytes
) -> dict[str, Any]:
    return {
        "b64_json": base64.b64encode(file).decode("ascii"),
        "background": "opaque",
        "created_at": created,
        "output_format": served.output_format,
        "quality": TIER_QUALITY[tier],
        "size": f"{served.width}x{served.height}",
    }


def partial_image_event(
    kind: StreamKind,
    created: int,
    served: GenerationRequest,
    tier: TierName,
    file: bytes,
    *,
    index: int,
) -> dict[str, Any]:
    """A streamed preview (`<kind>.partial_image`): an approximate image of the denoising so far."""
    return {
        "type": f"{kind}.partial_image",
        **_described(created, served, tier, file),
        "partial_image_index": index,
    }


def completed_event(
    kind: StreamKind,
    created: int,
    served: GenerationRequest,
    tier: TierName,
    file: bytes,
    *,
    prompt_tokens: int,
    image_steps: int,
) -> dict[str, Any]:
    """A streamed answer's last event (`<kind>.completed`): the image and the usage."""
    return {
        "type": f"{kind}.completed",
        **_described(created, served, tier, file),
        "usage": usage(prompt_tokens, image_steps),
    }


def error_event(body: Mapping[str, Any]) -> dict[str, Any]:
    """A failure after a stream began: the error body of the status it would have had."""
    return {"type": "error", **body}


def sse(event: Mapping[str, Any]) -> bytes:
    """One Server-Sent Event named by its `type`, its data one line of JSON."""
    data = json.dumps(event, separators=(",", ":"))
    return f"event: {event['type']}\ndata: {data}\n\n".encode()


def models_response(tiers: Mapping[TierName, TierRoute], created: int) -> dict[str, Any]:
    """`GET /v1/models`: one model per served tier, with its defaults and limits."""
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "duotone",
                "defaults": route.defaults.model_dump(mode="json"),
                "limits": route.limits.model_dump(mode="json"),
                "slo": route.slo.model_dump(mode="json"),
            }
            for name, route in tiers.items()
        ],
    }


_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _operation(operation_id: str, description: str, content: dict[str, Any]) -> dict[str, Any]:
    """A POST of an image endpoint: its body, its answers and every refusal it may give."""
    return {
        "operationId": operation_id,
        "description": description,
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": content},
        "responses": {
            "200": {
                "description": "The images; headers say which tier served them.",
                "headers": {
                    TIER_HEADER: {"schema": {"type": "string"}},
                    DEGRADED_HEADER: {"schema": {"type": "string"}},
                },
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ImagesResponse"}},
                    "text/event-stream": {
                        "schema": {
                            "type": "string",
                            "description": "With stream true: `<kind>.partial_image` events "
                            "(b64_json, partial_image_index), then one `<kind>.completed` event "
                            "(b64_json, usage); kind is image_generation or image_edit. A "
                            "failure after the first event is an `error` event.",
                        }
                    },
                },
            },
            "400": _error(
                "Malformed body (JSON or form), or a prompt refused by moderation (code "
                "moderation_blocked)."
            ),
            "401": _error("Missing or unknown API key."),
            "403": _error(
                "Client tier selection is disabled, or the API key may not use the tier."
            ),
            "404": _error("Unknown model."),
            "413": _error("Body or file larger than the limit."),
            "415": _error("Compressed body (Content-Encoding): send it plain."),
            "422": _error(
                "A field is invalid or beyond the tier's limits, or the request costs more "
                "than the key's per-minute work limit."
            ),
            "429": _error("Rate limit exceeded; see Retry-After."),
            "500": _error("The router failed; the message names the request id."),
            "502": _error("The tier failed; the message names the request id."),
            "503": _error("The tier is saturated; see Retry-After."),
            "504": _error("The tier did not answer within its deadline."),
        },
    }


_IMAGES_RESPONSE = {
    "type": "object",
    "required": ["created", "data", "output_format", "size", "quality", "usage"],
    "properties": {
        "created": {"type": "integer"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["b64_json"],
                "properties": {"b64_json": {"type": "string", "contentEncoding": "base64"}},
            },
        },
        "background": {"type": "string", "enum": ["opaque"]},
        "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
        "quality": {"type": "string", "enum": list(TIER_QUALITY.values())},
        "size": {"type": "string", "pattern": "^[0-9]+x[0-9]+$"},
        "usage": {
            "type": "object",
            "description": "input_tokens: the prompt's tokens as the tier's tokenizer counts "
            "them; output_tokens: image-steps computed (images x denoising steps run).",
            "required": ["input_tokens", "output_tokens", "total_tokens"],
            "properties": {
                "input_tokens": {"type": "integer"},
                "input_tokens_details": {
                    "type": "object",
                    "properties": {
                        "text_tokens": {"type": "integer"},
                        "image_tokens": {"type": "integer"},
                    },
                },
                "output_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
    },
}


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 description of the endpoint (served at /openapi.json)."""
    template = "#/components/schemas/{model}"
    request_schema = ImagesRequest.model_json_schema(ref_template=template)
    request_schema.pop("$defs", None)
    edit_schema = EditRequest.model_json_schema(ref_template=template)
    edit_schema.pop("$defs", None)
    binary = {"type": "string", "format": "binary"}
    edit_schema["properties"] = {
        "image": {
            "description": "The image to edit (PNG, JPEG or WebP); several as image[] "
            "(the first is edited).",
            **binary,
        },
        "mask": {
            "description": "PNG or WebP with alpha, the image's size: transparent pixels "
            "mark the area to change.",
            **binary,
        },
        **edit_schema["properties"],
    }
    edit_schema["required"] = ["image", "prompt"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Duotone image generation",
            "version": "v1",
            "description": "OpenAI Images API compatible endpoint in front of an efficient and "
            "a flagship text-to-image tier.",
        },
        "paths": {
            GENERATIONS_PATH: {
                "post": _operation(
                    "createImage",
                    "Generate images from a prompt.",
                    {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ImagesRequest"}
                        }
                    },
                )
            },
            EDITS_PATH: {
                "post": _operation(
                    "createImageEdit",
                    "Edit an image: image-to-image without a mask, inpainting with one.",
                    {
                        "multipart/form-data": {
                            "schema": {"$ref": "#/components/schemas/EditRequest"}
                        }
                    },
                )
            },
            MODELS_PATH: {
                "get": {
                    "operationId": "listModels",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {
                            "description": "The served tiers.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "401": _error("Missing or unknown API key."),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "ImagesRequest": request_schema,
                "EditRequest": edit_schema,
                "ImagesResponse": _IMAGES_RESPONSE,
                "Error": _ERROR_SCHEMA,
            },
        },
    }
