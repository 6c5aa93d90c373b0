"""What the gate refuses to forward because tritonserver could not parse it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from duotone_runtime.wire_checks import (
    GRPC_REQUEST_SCHEMAS,
    MAX_JSON_DEPTH,
    grpc_message_problem,
    http_body_problem,
    json_problem,
)

pytestmark = pytest.mark.unit

REQUEST = json.dumps(
    {"inputs": [{"name": "PROMPT", "shape": [1, 1], "datatype": "BYTES", "data": ["a cat"]}]}
).encode()


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        pytest.param(REQUEST, None, id="an inference request"),
        pytest.param(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[\\"]"}', None, id="brackets inside strings"),
        pytest.param(b"[" * 30000, "nested deeper than 16", id="30,000 levels"),
        pytest.param(
            b'{"a":' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",
            "nested deeper than 16",
            id="one level too deep",
        ),
        pytest.param(b'{"a": 1e999999}', "does not fit a double", id="float overflow"),
        pytest.param(b'{"a": ' + b"9" * 5000 + b"}", "does not fit a double", id="5,000 digits"),
        pytest.param(b'{"a": NaN}', "NaN is not JSON", id="NaN"),
        pytest.param(b'{"a": -Infinity}', "-Infinity is not JSON", id="infinity"),
        pytest.param(b'{"a": "\\ud800"}', "unpaired surrogate", id="lone surrogate escape"),
        pytest.param(b'{"a": "\xff"}', "not valid JSON", id="invalid UTF-8"),
        pytest.param(b"\xef\xbb\xbf{}", "not valid JSON", id="byte order mark"),
        pytest.param('{"a": 1}'.encode("utf-16"), "not valid JSON", id="UTF-16"),
        pytest.param(b"[1, 2]", "not a JSON object", id="an array"),
        pytest.param(b"", "not valid JSON", id="empty"),
    ],
)
def test_json_problem(body: bytes, problem: str | None) -> None:
    found = json_problem(body)
    assert found == problem if problem is None else problem in str(found)


@pytest.mark.parametrize(
    ("body", "header_length", "problem"),
    [
        pytest.param(REQUEST + b"\x00binary", str(len(REQUEST)), None, id="binary extension"),
        pytest.param(REQUEST, "abc", "is not a number", id="length not a number"),
        pytest.param(REQUEST, "-1", "is not a number", id="negative length"),
        pytest.param(REQUEST, "\u0661", "is not a number", id="non-ASCII digit"),
        pytest.param(REQUEST, str(len(REQUEST) + 1), "exceeds the body", id="length too long"),
        pytest.param(REQUEST + b"x", "3", "not valid JSON", id="header cut short"),
    ],
)
def test_http_body_problem(body: bytes, header_length: str, problem: str | None) -> None:
    found = http_body_problem(body, header_length)
    assert found == problem if problem is None else problem in str(found)


def valid_infer_request() -> bytes:
    request = service_pb2.ModelInferRequest(model_name="duotone", id="r-1")
    tensor = request.inputs.add(name="PROMPT", datatype="BYTES", shape=[1, 1])
    tensor.contents.bytes_contents.append("a cät".encode())
    tensor.parameters["p"].string_param = "v"
    request.inputs.add(name="STEPS", datatype="INT32", shape=[1, 1]).contents.int_contents.append(2)
    request.inputs.add(name="F", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(0.5)
    request.outputs.add(name="IMAGES").parameters["binary_data"].bool_param = True
    request.parameters["priority"].uint64_param = 1
    request.parameters["timeout"].double_param = 2.5
    request.raw_input_contents.append(b"\x00\xff")
    return bytes(request.SerializeToString())


VALID = valid_infer_request()


def parses(method: str, data: bytes) -> bool:
    """protobuf's own verdict, as tritonserver's parser gives it."""
    name, _ = GRPC_REQUEST_SCHEMAS[method]
    try:
        getattr(service_pb2, name).FromString(data)
    except DecodeError:
        return False
    return True


SCALAR_KINDS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "varint",
    FieldDescriptor.TYPE_INT32: "varint",
    FieldDescriptor.TYPE_INT64: "varint",
    FieldDescriptor.TYPE_UINT32: "varint",
    FieldDescriptor.TYPE_UINT64: "varint",
    FieldDescriptor.TYPE_FLOAT: "fixed32",
    FieldDescriptor.TYPE_DOUBLE: "fixed64",
}


def compare(descriptor: Any, schema: Any) -> None:
    fields = {field.number: field for field in descriptor.fields}
    assert set(fields) == set(schema), descriptor.full_name
    for number, field in fields.items():
        if field.message_type is not None:
            compare(field.message_type, schema[number])
            continue
        kind = SCALAR_KINDS[field.type]
        packable = field.is_repeated and kind not in {"string", "bytes"}
        assert schema[number] == kind + ("*" if packable else ""), field.full_name


def test_the_schema_matches_the_generated_messages() -> None:
    for name, schema in GRPC_REQUEST_SCHEMAS.values():
        compare(getattr(service_pb2, name).DESCRIPTOR, schema)


@pytest.mark.parametrize(
    ("method", "data", "valid"),
    [
        pytest.param("ModelInfer", VALID, True, id="a full inference request"),
        pytest.param("ServerLive", b"", True, id="an empty request"),
        pytest.param("ServerLive", b"\xff\xff\xff", False, id="a truncated varint"),
        pytest.param("ModelReady", b"\x0a\x02\xc3\x28", False, id="a name that is not UTF-8"),
        pytest.param("ModelReady", b"\x12\x05ab", False, id="a field longer than the message"),
        pytest.param("ModelInfer", b"\x2a\x03\x1a\x01\xff", False, id="a bad packed varint"),
        pytest.param("ModelInfer", b"\x0f", False, id="wire type 7"),
        pytest.param("ModelInfer", b"\x00\x00", False, id="field number 0"),
        pytest.param("ModelInfer", b"\x0b\x10\x01", False, id="an unterminated group"),
        pytest.param("ModelInfer", b"\x0b\x10\x01\x0c", True, id="a group in an unknown place"),
        pytest.param("ModelInfer", b"\xa0\x06\x01", True, id="an unknown field"),
        pytest.param("ModelInfer", VALID[:-1], False, id="the last byte cut off"),
    ],
)
def test_grpc_message_problem(method: str, data: bytes, valid: bool) -> None:
    assert parses(method, data) is valid, "the case itself is wrong"
    assert (grpc_message_problem(method, data) is None) is valid


@settings(max_examples=400)
@given(
    st.sampled_from(sorted(GRPC_REQUEST_SCHEMAS)),
    st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda at, byte: VALID[:at] + bytes([byte]) + VALID[at + 1 :],
            st.integers(0, len(VALID) - 1),
            st.integers(0, 255),
        ),
        st.integers(0, len(VALID)).map(lambda at: VALID[:at]),
    ),
)
@example("ModelInfer", VALID)
def test_the_gate_agrees_with_protobuf(method: str, data: bytes) -> None:
    assert (grpc_message_problem(method, data) is None) is parses(method, data)


def test_methods_the_gate_does_not_forward_have_no_message() -> None:
    assert grpc_message_problem("LogSettings", b"") == "LogSettings is not served"
