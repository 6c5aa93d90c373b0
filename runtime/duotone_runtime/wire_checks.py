"""Well-formedness of what the gate forwards: an HTTP inference body's JSON, a gRPC message.

tritonserver answers a body or message it cannot parse as an internal error (HTTP 500 "failed
to parse the request JSON buffer", gRPC INTERNAL "Unable to parse request"), which a client
cannot tell from a broken server. The gate parses first and answers HTTP 400 or gRPC
INVALID_ARGUMENT itself; what it forwards tritonserver can parse, so its answers are its own
input validation (pure). gRPC messages are checked on the protobuf wire format with a small
schema of Triton's request messages, so the gate needs no protobuf runtime or Triton client.
"""

from __future__ import annotations

import json
import math
import re
from typing import Final

MAX_JSON_DEPTH: Final = 16
"""An inference request nests 4 deep (request, inputs, input, data); 16 leaves room for
parameters."""
_MAX_NUMBER_DIGITS: Final = 300
"""A JSON number tritonserver stores in a double is below 1.8e308: at most 309 digits."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")

# Triton's request messages (grpc_service.proto), field number -> kind: "string" (UTF-8 that
# the parser checks), "bytes", a scalar "varint"/"fixed32"/"fixed64" ("*": repeated, so it
# may also come packed), or the schema of a nested message. Pinned to the generated classes
# by tests/unit/runtime/test_wire_checks.py.
Schema = dict[int, "str | Schema"]
_INFER_PARAMETER: Schema = {1: "varint", 2: "varint", 3: "string", 4: "fixed64", 5: "varint"}
_PARAMETERS_ENTRY: Schema = {1: "string", 2: _INFER_PARAMETER}
_TENSOR_CONTENTS: Schema = {
    1: "varint*",
    2: "varint*",
    3: "varint*",
    4: "varint*",
    5: "varint*",
    6: "fixed32*",
    7: "fixed64*",
    8: "bytes",
}
_INFER_INPUT: Schema = {
    1: "string",
    2: "string",
    3: "varint*",
    4: _PARAMETERS_ENTRY,
    5: _TENSOR_CONTENTS,
}
_INFER_OUTPUT: Schema = {1: "string", 2: _PARAMETERS_ENTRY}
_INFER_REQUEST: Schema = {
    1: "string",
    2: "string",
    3: "string",
    4: _PARAMETERS_ENTRY,
    5: _INFER_INPUT,
    6: _INFER_OUTPUT,
    7: "bytes",
}
_NAMED: Schema = {1: "string", 2: "string"}

GRPC_REQUEST_SCHEMAS: Final[dict[str, tuple[str, Schema]]] = {
    "ServerLive": ("ServerLiveRequest", {}),
    "ServerReady": ("ServerReadyRequest", {}),
    "ModelReady": ("ModelReadyRequest", _NAMED),
    "ServerMetadata": ("ServerMetadataRequest", {}),
    "ModelMetadata": ("ModelMetadataRequest", _NAMED),
    "ModelInfer": ("ModelInferRequest", _INFER_REQUEST),
    "ModelStreamInfer": ("ModelInferRequest", _INFER_REQUEST),
    "ModelStatistics": ("ModelStatisticsRequest", _NAMED),
}
"""The request message of every gRPC method the gate forwards."""

_MAX_GROUP_DEPTH: Final = 100
"""protobuf's own recursion limit."""
_FIXED_SIZES: Final = {1: 8, 5: 4}


class _MalformedError(ValueError):
    pass


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at `at` and the position after it."""
    value = shift = 0
    for position in range(at, min(at + 10, len(data))):
        byte = data[position]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position + 1
        shift += 7
    raise _MalformedError("bad varint")


def _packed(data: bytes, kind: str) -> None:
    if kind.startswith("varint"):
        at = 0
        while at < len(data):
            _, at = _varint(data, at)
    elif len(data) % (4 if kind.startswith("fixed32") else 8):
        raise _MalformedError("bad packed field")


def _check_message(data: bytes, schema: Schema) -> None:
    """Raise _MalformedError unless `data` parses as a message of `schema`."""
    at = 0
    groups: list[int] = []
    while at < len(data):
        tag, at = _varint(data, at)
        number, wire = tag >> 3, tag & 7
        if number == 0 or tag > 0xFFFFFFFF:
            raise _MalformedError("bad tag")
        if wire == 0:
            _, at = _varint(data, at)
        elif wire in _FIXED_SIZES:
            at += _FIXED_SIZES[wire]
        elif wire == 2:  # length-delimited
            length, at = _varint(data, at)
            if length > len(data) - at:
                raise _MalformedError("truncated field")
            value, at = data[at : at + length], at + length
            if not groups:
                _check_field(value, schema.get(number))
        elif wire == 3:  # start group
            groups.append(number)
            if len(groups) > _MAX_GROUP_DEPTH:
                raise _MalformedError("groups nested too deep")
        elif wire == 4 and groups and groups[-1] == number:  # end group
            groups.pop()
        else:
            raise _MalformedError("bad wire type")
    if at > len(data) or groups:
        raise _MalformedError("truncated message")


def _check_field(value: bytes, kind: str | Schema | None) -> None:
    if isinstance(kind, dict):
        _check_message(value, kind)
    elif kind == "string":
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _MalformedError("string is not UTF-8") from error
    elif kind is not None and kind.endswith("*"):
        _packed(value, kind)


class _NotJsonError(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJsonError(f"number {text[:20]}... does not fit a double")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_NUMBER_DIGITS:
        raise _NotJsonError(f"number {text[:20]}... does not fit a double")
    return int(text)


def _no_constant(text: str) -> None:
    raise _NotJsonError(f"{text} is not JSON")


def _depth_problem(value: object, depth: int = 1) -> str | None:
    """Too deep, or a string that is not valid Unicode (a lone surrogate escape)."""
    if depth > MAX_JSON_DEPTH:
        return f"nested deeper than {MAX_JSON_DEPTH}"
    items: list[object]
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = value
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a string holds an unpaired surrogate"
        return None
    else:
        return None
    for item in items:
        if (problem := _depth_problem(item, depth + 1)) is not None:
            return problem
    return None


def json_problem(data: bytes) -> str | None:
    """Why `data` is not a JSON object tritonserver can parse (None: it is one)."""
    # Before parsing: Python's parser recurses once per level (30,000 levels of `[` fit in a
    # small body), so the depth is bounded on the text, strings taken out, first.
    depth = 0
    for bracket in _BRACKET.finditer(_STRING.sub(b"", data)):
        depth += 1 if bracket.group() in b"[{" else -1
        if depth > MAX_JSON_DEPTH:
            return f"nested deeper than {MAX_JSON_DEPTH}"
    try:
        value = json.loads(
            data.decode("utf-8"),
            parse_float=_finite_float,
            parse_int=_bounded_int,
            parse_constant=_no_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        return f"not valid JSON: {str(error)[:80]}"
    if not isinstance(value, dict):
        return "not a JSON object"
    return _depth_problem(value)


def http_body_problem(body: bytes, header_length: str | None) -> str | None:
    """Why an inference body is malformed (None: forward it). `header_length`: the
    `Inference-Header-Content-Length` header of Triton's binary tensor extension, whose first
    bytes are the JSON part."""
    if header_length is None:
        return json_problem(body)
    if not header_length.isascii() or not header_length.isdigit():
        return "Inference-Header-Content-Length is not a number"
    length = int(header_length)
    if length > len(body):
        return "Inference-Header-Content-Length exceeds the body"
    return json_problem(body[:length])


def grpc_message_problem(method: str, data: bytes) -> str | None:
    """Why `data` is not a request message of `method` (a name such as "ModelInfer")."""
    if method not in GRPC_REQUEST_SCHEMAS:
        return f"{method} is not served"
    name, schema = GRPC_REQUEST_SCHEMAS[method]
    try:
        _check_message(data, schema)
    except _MalformedError:
        return f"not a valid {name}"
    return None
