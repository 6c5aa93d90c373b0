"""Hostile input at the router's front: every class is refused with a 4xx naming the field,
never an exception, and nothing grows beyond a small multiple of the body."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tracemalloc
from pathlib import Path

import pytest
from aiohttp.http_exceptions import TransferEncodingError
from aiohttp.web_protocol import RequestPayloadError
from hypothesis import given, settings
from hypothesis import strategies as st

from duotone_contracts.limits import GenerationRequest
from duotone_router.guards import authenticate, read_body
from duotone_router.images import (
    MAX_JSON_CONTAINERS,
    MAX_JSON_MEMBERS,
    MAX_NUMBER_CHARS,
    ImagesRequest,
    generation_request,
    parse_images_request,
)
from duotone_router.keys import load_api_keys
from duotone_router.policy.reasons import Reason, Refused
from duotone_router.responses import error_answer
from duotone_testbed import fuzz
from tests.support.builders import small_tier_route

pytestmark = pytest.mark.unit

LIMIT = 65536
"""The default router.maxBodyBytes."""

TIER = small_tier_route()

DIGITS_5000 = "9" * 5000


def _refusal(body: bytes) -> tuple[int, str | None, str]:
    """(status, param, message) of a body the router refuses before or while preparing it."""
    with pytest.raises(Refused) as caught:
        generation_request(parse_images_request(body), TIER, seed_if_missing=1)
    answer = error_answer(caught.value, "r")
    assert answer.body["error"]["param"] == caught.value.param
    return answer.status, caught.value.param, caught.value.message


def _with(field: str, literal: str) -> bytes:
    return f'{{"prompt": "x", "{field}": {literal}}}'.encode()


# ---------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "field", ["n", "steps", "seed", "guidance_scale", "prompt", "size", "unknown"]
)
@pytest.mark.parametrize(
    "literal",
    [
        pytest.param(DIGITS_5000, id="5000-digit integer"),
        pytest.param("-" + DIGITS_5000, id="negative 5000-digit integer"),
        pytest.param("1" + "0" * 5000 + ".5", id="5000-digit float"),
        pytest.param("1." + "0" * 200 + "1e5", id="long fraction"),
    ],
)
def test_a_number_too_long_to_parse_is_a_422_naming_its_field(field: str, literal: str) -> None:
    status, param, message = _refusal(_with(field, literal))
    assert (status, param) == (422, field)
    if field != "unknown":
        assert f"a number of {len(literal)} characters (at most {MAX_NUMBER_CHARS})" in message


@pytest.mark.parametrize(
    ("literal", "status", "param", "fragment"),
    [
        pytest.param("NaN", 400, None, "NaN is not valid JSON", id="NaN refused as JSON"),
        pytest.param("Infinity", 400, None, "Infinity is not valid JSON", id="Infinity"),
        pytest.param("-Infinity", 400, None, "-Infinity is not valid JSON", id="-Infinity"),
        pytest.param("1e999", 422, "guidance_scale", "finite", id="1e999 overflows to inf"),
        pytest.param("-1e999", 422, "guidance_scale", "finite", id="-1e999"),
        pytest.param("1" + "0" * 99, 422, "guidance_scale", "maxGuidanceScale", id="1e99 int"),
        pytest.param('"7"', 422, "guidance_scale", "valid number", id="a string"),
    ],
)
def test_guidance_scale_must_be_a_finite_number(
    literal: str, status: int, param: str | None, fragment: str
) -> None:
    got_status, got_param, message = _refusal(_with("guidance_scale", literal))
    assert (got_status, got_param) == (status, param)
    assert fragment in message


@pytest.mark.parametrize(
    ("field", "literal", "fragment"),
    [
        pytest.param("seed", str(2**63), "between 0 and 2^63-1", id="seed 2^63 overflows int64"),
        pytest.param("seed", "9" * 100, "between 0 and 2^63-1", id="seed of 100 digits"),
        pytest.param("seed", "-1", "between 0", id="negative seed"),
        pytest.param("seed", "-0.0", "valid integer", id="-0.0 seed is a float"),
        pytest.param("seed", "1e3", "valid integer", id="1e3 seed is a float"),
        pytest.param("steps", str(2**31), "limits.maxSteps 4", id="steps 2^31 overflows int32"),
        pytest.param("steps", "-0", "at least 1", id="-0 steps"),
        pytest.param("steps", "2.0", "valid integer", id="float for an int"),
        pytest.param("steps", "true", "valid integer", id="bool for an int"),
        pytest.param("n", str(2**64), "less than or equal to 16", id="n 2^64"),
        pytest.param("n", "1.5", "valid integer", id="n a float"),
    ],
)
def test_numbers_beyond_the_wire_types_are_refused(field: str, literal: str, fragment: str) -> None:
    status, param, message = _refusal(_with(field, literal))
    assert (status, param) == (422, field)
    assert fragment in message


def test_the_largest_seed_and_negative_zero_guidance_are_served() -> None:
    body = _with("seed", str(2**63 - 1))
    assert generation_request(parse_images_request(body), TIER, seed_if_missing=1).seed == 2**63 - 1
    prepared = generation_request(
        parse_images_request(_with("guidance_scale", "-0.0")), TIER, seed_if_missing=1
    )
    assert prepared.guidance_scale == 0.0


# ---------------------------------------------------------------------------- nesting


def _within(limit: int, opening: bytes, closing: bytes) -> bytes:
    depth = (limit - 40) // (len(opening) + len(closing))
    return opening * depth + closing * depth


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_within(LIMIT, b"[", b"]"), id="30,000 nested arrays"),
        pytest.param(_within(LIMIT, b'{"a":', b"}"), id="nested objects"),
        pytest.param(
            b'{"prompt": "x", "user": ' + _within(LIMIT, b"[", b"]") + b"}",
            id="nested arrays inside a field",
        ),
        pytest.param(b"[" * 40000, id="unclosed arrays"),
        pytest.param(
            b'{"prompt": "' + b"]" * 100 + b'", "u": ' + b"[" * 30000,
            id="closing brackets hidden in a string do not offset the count",
        ),
        pytest.param(
            b'{"prompt": "\\"", "u": ' + b"[" * 30000,
            id="an escaped quote does not end the string",
        ),
        pytest.param(b"[" + b"0," * 30000 + b"0]", id="30,000 values"),
        pytest.param(b'"a",' * 16000, id="16,000 strings"),
        pytest.param(b'"\\"' * 20000, id="20,000 unclosed strings"),
    ],
)
def test_deep_or_wide_json_is_refused_before_parsing(body: bytes) -> None:
    assert len(body) <= 2 * LIMIT
    status, param, message = _refusal(body)
    assert (status, param) == (400, None)
    assert "a request is one flat JSON object" in message


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param("a cat, [sitting] {on} a mat, " * 600, id="commas and brackets in a prompt"),
        pytest.param('quotes " and \\ backslashes \\" ' * 300, id="escapes in a prompt"),
    ],
)
def test_punctuation_inside_strings_is_not_counted(prompt: str) -> None:
    body = json.dumps({"prompt": prompt[:20000], "user": "u,[{"}).encode()
    assert parse_images_request(body).prompt == prompt[:20000]


def test_a_shallow_structure_is_a_422_naming_the_field() -> None:
    status, param, message = _refusal(b'{"prompt": ["a", {"b": [1]}]}')
    assert (status, param) == (422, "prompt")
    assert "valid string" in message
    assert MAX_JSON_CONTAINERS > 3


def test_many_unknown_fields_are_listed_briefly() -> None:
    fields = {f"field{i}": i for i in range(MAX_JSON_MEMBERS - 1)}
    status, param, message = _refusal(json.dumps({"prompt": "x", **fields}).encode())
    assert (status, param) == (422, "field0")
    assert message.endswith(f"and {MAX_JSON_MEMBERS - 1 - 5} more problems")


def test_a_long_unknown_field_name_is_echoed_shortened() -> None:
    name = "k" * 30000
    status, param, _ = _refusal(json.dumps({"prompt": "x", name: 1}).encode())
    assert status == 422
    assert param == "k" * 100 + "..."


# ---------------------------------------------------------------------------- unicode


@pytest.mark.parametrize(
    ("body", "status", "param", "fragment"),
    [
        pytest.param(
            b'{"prompt": "\\ud800"}', 422, "prompt", "lone surrogate", id="lone high surrogate"
        ),
        pytest.param(
            b'{"prompt": "x", "negative_prompt": "a\\udfffb"}',
            422,
            "negative_prompt",
            "lone surrogate",
            id="lone low surrogate in the negative prompt",
        ),
        pytest.param(
            b'{"prompt": "x", "model": "\\ude00\\ud83d"}',
            422,
            "model",
            "lone surrogate",
            id="reversed surrogate pair",
        ),
        pytest.param(b'{"prompt": "caf\xe9"}', 400, None, "not UTF-8", id="latin-1 body"),
        pytest.param(b'{"prompt": "\xc0\xaf"}', 400, None, "not UTF-8", id="overlong UTF-8"),
        pytest.param(b'{"prompt": "\xed\xa0\x80"}', 400, None, "not UTF-8", id="raw surrogate"),
        pytest.param('{"prompt": "x"}'.encode("utf-16"), 400, None, "not UTF-8", id="UTF-16 body"),
        pytest.param(b'\xef\xbb\xbf{"prompt": "x"}', 400, None, "not valid JSON", id="UTF-8 BOM"),
        pytest.param(b'{"prompt": "x\x00"}', 400, None, "not valid JSON", id="raw NUL"),
    ],
)
def test_text_that_cannot_become_utf8_is_refused(
    body: bytes, status: int, param: str | None, fragment: str
) -> None:
    got_status, got_param, message = _refusal(body)
    assert (got_status, got_param) == (status, param)
    assert fragment in message


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param("a\u0000b", id="escaped NUL"),
        pytest.param("\u202eright to left\u202c", id="RTL override"),
        pytest.param("\U0001f600 smile", id="astral plane"),
        pytest.param("e\u0301" * 100, id="combining marks"),
    ],
)
def test_unusual_but_valid_text_is_served_and_encodes_as_utf8(prompt: str) -> None:
    request = parse_images_request(json.dumps({"prompt": prompt}).encode())
    assert request.prompt.encode("utf-8").decode("utf-8") == prompt


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(sorted(ImagesRequest.model_fields)) | st.text(max_size=4)


def _outcome(body: bytes) -> GenerationRequest | int:
    """The prepared request, or the status of its refusal."""
    try:
        return generation_request(parse_images_request(body), TIER, seed_if_missing=1)
    except Refused as refused:
        return error_answer(refused, "r").status


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(FIELDS, JSON_VALUES, max_size=6))
def test_any_json_object_is_served_or_refused_with_a_4xx(document: dict[str, object]) -> None:
    outcome = _outcome(json.dumps(document).encode())
    if isinstance(outcome, int):
        assert 400 <= outcome < 500
    else:
        outcome.prompt.encode("utf-8")
        outcome.negative_prompt.encode("utf-8")
        assert 0 <= outcome.seed < 2**63


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_served_or_refused_with_a_4xx(body: bytes) -> None:
    outcome = _outcome(body)
    assert not isinstance(outcome, int) or 400 <= outcome < 500


# ---------------------------------------------------------------------------- memory

WORST_BODIES = {
    "escapes": b'{"prompt": "' + b"\\u0041" * ((LIMIT - 20) // 6) + b'"}',
    "astral text": b'{"prompt": "' + "\U0001f600".encode() * ((LIMIT - 20) // 4) + b'"}',
    "unclosed strings": b'"\\"' * (LIMIT // 3),
    "nesting": b"[" * LIMIT,
    "one long number": b'{"steps": ' + b"9" * (LIMIT - 20) + b"}",
    "many fields": json.dumps(
        {f"f{i}": "v" * ((LIMIT // MAX_JSON_MEMBERS) - 12) for i in range(MAX_JSON_MEMBERS)}
    ).encode(),
}


@pytest.mark.parametrize("body", [pytest.param(b, id=name) for name, b in WORST_BODIES.items()])
def test_parsing_allocates_a_small_multiple_of_the_body(body: bytes) -> None:
    body = body[:LIMIT]
    tracemalloc.start()
    try:
        with contextlib.suppress(Refused):
            parse_images_request(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Measured worst: astral text, ~5x (the body decoded to 4-byte characters, then copied into
    # the prompt and its validation); everything else stays under 2.5x.
    assert peak < 8 * LIMIT, f"{peak} bytes for a {len(body)}-byte body"


# ---------------------------------------------------------------------------- body reading


class Arriving:
    """A body arriving in `chunks` as aiohttp's `StreamReader.read(n)` returns it: at most n
    bytes of what has arrived, then b"" at the end. Records every read's size."""

    def __init__(self, *chunks: bytes, error: Exception | None = None) -> None:
        self.chunks = list(chunks)
        self.error = error
        self.asked: list[int] = []
        self.handed = 0

    async def read(self, n: int) -> bytes:
        self.asked.append(n)
        if not self.chunks:
            if self.error is not None:
                raise self.error
            return b""
        chunk = self.chunks[0][:n]
        self.chunks[0] = self.chunks[0][n:]
        if not self.chunks[0]:
            self.chunks.pop(0)
        self.handed += len(chunk)
        return chunk


BODY = b'{"prompt": "a cat", "model": "dall-e-3"}'


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([BODY], id="one piece"),
        pytest.param([BODY[:10], BODY[10:]], id="two chunks"),
        pytest.param([BODY[i : i + 1] for i in range(len(BODY))], id="one byte at a time"),
        pytest.param([b"", BODY[:3], b"", BODY[3:]], id="with empty reads between"),
    ],
)
def test_a_body_is_read_to_its_end_however_it_arrives(chunks: list[bytes]) -> None:
    arriving = Arriving(*[c for c in chunks if c])
    assert asyncio.run(read_body(None, arriving.read, LIMIT)) == BODY


@pytest.mark.parametrize(
    "chunk", [pytest.param(1, id="1-byte chunks"), pytest.param(4096, id="4 KiB chunks")]
)
def test_an_endless_body_is_refused_after_the_limit_plus_one_byte(chunk: int) -> None:
    limit = 10000

    class Endless(Arriving):
        async def read(self, n: int) -> bytes:
            self.asked.append(n)
            self.handed += min(n, chunk)
            return b"x" * min(n, chunk)

    endless = Endless()
    with pytest.raises(Refused) as refused:
        asyncio.run(read_body(None, endless.read, limit))
    assert (refused.value.reason, refused.value.param) == (Reason.BODY_TOO_LARGE, "body")
    assert endless.handed == limit + 1
    assert max(endless.asked) == limit + 1


def test_a_body_with_broken_framing_is_a_400() -> None:
    broken = Arriving(BODY[:5], error=RequestPayloadError("Response payload is not completed"))
    with pytest.raises(Refused) as refused:
        asyncio.run(read_body(None, broken.read, LIMIT))
    assert (refused.value.reason, refused.value.param) == (Reason.UNREADABLE_BODY, "body")
    assert error_answer(refused.value, "r").status == 400
    bad_size = Arriving(error=TransferEncodingError("Not enough data to satisfy chunk"))
    with pytest.raises(Refused):
        asyncio.run(read_body(None, bad_size.read, LIMIT))


@pytest.mark.parametrize(
    ("encodings", "refused"),
    [
        pytest.param([], False, id="no header"),
        pytest.param(["identity"], False, id="identity"),
        pytest.param(["Identity, "], False, id="identity listed with an empty entry"),
        pytest.param(["gzip"], True, id="gzip"),
        pytest.param(["deflate"], True, id="deflate"),
        pytest.param(["br"], True, id="br"),
        pytest.param(["zstd"], True, id="zstd"),
        pytest.param(["bogus\udcff"], True, id="unknown coding with a non-UTF-8 byte"),
        pytest.param(["identity, gzip"], True, id="gzip in a list"),
        pytest.param(["identity", "gzip"], True, id="gzip in a second header"),
    ],
)
def test_compressed_bodies_are_refused_unread(encodings: list[str], refused: bool) -> None:
    arriving = Arriving(BODY)
    reading = read_body(len(BODY), arriving.read, LIMIT, content_encodings=encodings)
    if not refused:
        assert asyncio.run(reading) == BODY
        return
    with pytest.raises(Refused) as caught:
        asyncio.run(reading)
    answer = error_answer(caught.value, "r")
    assert (answer.status, answer.body["error"]["param"]) == (415, "Content-Encoding")
    assert answer.body["error"]["code"] == "unsupported_encoding"
    assert arriving.asked == []


# ---------------------------------------------------------------------------- API keys


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    (tmp_path / "ascii").write_bytes(b"s3cret")
    (tmp_path / "latin").write_bytes("cl\u00e9-s3cret".encode("latin-1"))
    return tmp_path


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("Bearer \udcff\udcfe\udc80", id="invalid UTF-8 bytes (surrogate-escaped)"),
        pytest.param("Bearer caf\u00e9", id="non-ASCII text"),
        pytest.param("Bearer \ud800", id="a lone surrogate no bytes decode to"),
        pytest.param("Bearer s3cret\x00", id="NUL after a real key"),
        pytest.param("Bearer " + "k" * 8000, id="very long"),
        pytest.param("Bearer \u202es3cret", id="RTL mark before a real key"),
    ],
)
def test_hostile_authorization_is_an_invalid_key(keys: Path, header: str) -> None:
    with pytest.raises(Refused) as refused:
        authenticate(load_api_keys(keys), header)
    assert refused.value.reason is Reason.INVALID_API_KEY
    assert error_answer(refused.value, "r").status == 401


def test_a_key_of_any_bytes_matches_the_same_bytes_on_the_wire(keys: Path) -> None:
    sent = b"Bearer " + "cl\u00e9-s3cret".encode("latin-1")
    as_decoded = sent.decode("utf-8", "surrogateescape")  # what aiohttp hands the handler
    assert authenticate(load_api_keys(keys), as_decoded) == "latin"


# ---------------------------------------------------------------------------- the raw corpus

CORPUS_TEMPLATE = {"prompt": "a red cube", "model": "no-such-model", "steps": 1, "seed": 7}


def test_the_raw_corpus_is_reproducible_and_covers_every_class() -> None:
    cases = fuzz.corpus(7, template=CORPUS_TEMPLATE, authorization="Bearer k")
    assert len(cases) >= 1000
    assert [c.data for c in cases] == [
        c.data for c in fuzz.corpus(7, template=CORPUS_TEMPLATE, authorization="Bearer k")
    ]
    assert [c.data for c in cases] != [
        c.data for c in fuzz.corpus(8, template=CORPUS_TEMPLATE, authorization="Bearer k")
    ]
    assert {c.kind for c in cases} == {
        "framing",
        "encodings",
        "numbers",
        "nesting",
        "headers",
        "unicode",
        "content-types",
        "methods-paths",
    }
    # Complete: every head ends, so a server never waits for more bytes to answer.
    assert all(b"\r\n\r\n" in c.data for c in cases)


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        pytest.param(b"9" * 5000, b'"steps": ' + b"9" * 5000, id="a raw number"),
        pytest.param(b'"\xff"', b'"steps": "\xff"', id="bytes that are not UTF-8"),
    ],
)
def test_splice_puts_raw_bytes_at_a_leaf(fragment: bytes, expected: bytes) -> None:
    assert expected in fuzz.splice(CORPUS_TEMPLATE, ("steps",), fragment)
    assert list(fuzz.leaf_paths({"a": [1, {"b": 2}], "c": 3})) == [("a", 0), ("a", 1, "b"), ("c",)]


def test_chunked_framing_ends_with_the_last_chunk() -> None:
    assert (
        fuzz.chunked([b"hello", b"", b"!"], b";x=1") == b"5;x=1\r\nhello\r\n1;x=1\r\n!\r\n0\r\n\r\n"
    )
