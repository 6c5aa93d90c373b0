"""Router guards and translation: token buckets, API keys, the Images API, error classes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duotone_contracts.api.v1alpha1 import (
    RateLimitSpec,
)
from duotone_contracts.services import addresses_from_slices
from duotone_contracts.triton import DRAINING_REFUSAL, MODEL_FAILED_REFUSAL
from duotone_router.backends import Failure, classify
from duotone_router.config import ConfigError, parse_static_backends
from duotone_router.guards import (
    ANONYMOUS,
    PRIORITY_HEADER,
    RateLimiter,
    authenticate,
    read_body,
    request_priority,
)
from duotone_router.images import (
    generation_request,
    openapi_document,
    parse_images_request,
    requested_tier,
)
from duotone_router.keys import bearer_token, load_api_keys
from duotone_router.policy.ratelimit import TokenBucket, take
from duotone_router.policy.reasons import Reason, Refused
from duotone_router.responses import error_answer
from duotone_runtime.step_loop import REFUSAL_MESSAGES as STEP_REFUSALS
from duotone_runtime.step_loop import Refusal
from tests.support.builders import small_tier_route

TIER = small_tier_route()


def test_bucket_allows_the_burst_then_says_when_to_retry() -> None:
    bucket = TokenBucket.full(per_minute=60, burst=3, now=0.0)
    for _ in range(3):
        admission, bucket = take(bucket, 0.0)
        assert admission.allowed
    admission, bucket = take(bucket, 0.0)
    assert (admission.allowed, admission.retry_after_s) == (False, 1)
    admission, bucket = take(bucket, 1.0)  # one token per second refilled
    assert admission.allowed


@given(st.lists(st.floats(0, 5), max_size=60), st.integers(1, 600), st.integers(1, 20))
def test_bucket_never_admits_more_than_burst_plus_refill(gaps, per_minute, burst) -> None:  # type: ignore[no-untyped-def]
    bucket, now, admitted = (
        TokenBucket.full(per_minute=per_minute, burst=burst, now=0.0),
        0.0,
        0,
    )
    for gap in gaps:
        now += gap
        admission, bucket = take(bucket, now)
        admitted += admission.allowed
    assert admitted <= burst + now * per_minute / 60 + 1e-9


def test_api_keys_from_a_secret_mount(tmp_path: Path) -> None:
    (tmp_path / "search-team").write_text("s3cret-one\n")
    (tmp_path / "agents").write_text("s3cret-two")
    (tmp_path / "..data").mkdir()  # what a Secret volume also holds
    keys = load_api_keys(tmp_path)
    assert keys.identify("s3cret-one") == "search-team"
    assert keys.identify("s3cret-two") == "agents"
    assert keys.identify("s3cret") is None
    assert keys.identify("") is None


@pytest.mark.parametrize(
    ("header", "token"),
    [
        pytest.param("Bearer abc", "abc", id="bearer"),
        pytest.param("bearer  abc ", "abc", id="case and spaces"),
        pytest.param("Basic abc", None, id="other schemes refused"),
        pytest.param("Bearer ", None, id="empty token"),
        pytest.param(None, None, id="no header"),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def _error(body: dict[str, object] | bytes) -> Refused:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    def attempt() -> None:
        generation_request(parse_images_request(raw), TIER, seed_if_missing=1)

    with pytest.raises(Refused) as caught:
        attempt()
    return caught.value


@pytest.mark.parametrize(
    ("body", "status", "param", "fragment"),
    [
        pytest.param(b"{not json", 400, None, "not valid JSON", id="malformed JSON"),
        pytest.param(b"[1]", 400, None, "JSON object", id="not an object"),
        pytest.param({}, 422, "prompt", "Field required", id="prompt missing"),
        pytest.param({"prompt": "x", "n": "2"}, 422, "n", "valid integer", id="n as a string"),
        pytest.param(
            {"prompt": "x", "n": 3}, 422, "n", "maxImagesPerRequest 2", id="n over the tier limit"
        ),
        pytest.param(
            {"prompt": "x", "steps": 9},
            422,
            "steps",
            "limits.maxSteps 4",
            id="steps over the tier limit",
        ),
        pytest.param(
            {"prompt": "x", "size": "100x64"},
            422,
            "width",
            "multiple of 8",
            id="width not a multiple of 8",
        ),
        pytest.param(
            {"prompt": "x", "size": "64x512"},
            422,
            "height",
            "maxHeight 256",
            id="height over the limit",
        ),
        pytest.param({"prompt": "x", "size": "big"}, 422, "size", "pattern", id="size not WxH"),
        pytest.param(
            {"prompt": "x", "response_format": "url"},
            422,
            "response_format",
            "b64_json",
            id="url responses unsupported",
        ),
        pytest.param(
            {"prompt": "x", "colour": "red"}, 422, "colour", "Extra inputs", id="unknown field"
        ),
        pytest.param({"prompt": "  "}, 422, "prompt", "must not be empty", id="blank prompt"),
        pytest.param({"prompt": "x", "seed": -1}, 422, "seed", "between 0", id="negative seed"),
        pytest.param(
            {"prompt": "x", "guidance_scale": 99.0},
            422,
            "guidance_scale",
            "maxGuidanceScale",
            id="guidance over the limit",
        ),
    ],
)
def test_bad_requests_name_the_field(body, status, param, fragment) -> None:  # type: ignore[no-untyped-def]
    error = _error(body)
    answer = error_answer(error, "request-1")
    assert (answer.status, error.param) == (status, param)
    assert fragment in error.message
    assert answer.body["error"]["param"] == param


def test_defaults_and_size_apply() -> None:
    request = parse_images_request(b'{"prompt": "a cat", "size": "128x64", "n": 2, "seed": 5}')
    prepared = generation_request(request, TIER, seed_if_missing=1)
    assert (
        prepared.width,
        prepared.height,
        prepared.num_images,
        prepared.steps,
        prepared.seed,
    ) == (128, 64, 2, 2, 5)


@pytest.mark.parametrize(
    ("body", "tier"),
    [
        pytest.param({"prompt": "x"}, None, id="nothing named"),
        pytest.param({"prompt": "x", "quality": "hd"}, "flagship", id="quality hd -> flagship"),
        pytest.param(
            {"prompt": "x", "quality": "standard"}, "efficient", id="quality standard -> efficient"
        ),
        pytest.param(
            {"prompt": "x", "quality": "auto"}, None, id="quality auto leaves it to the split"
        ),
        pytest.param(
            {"prompt": "x", "model": "flagship", "quality": "low"},
            "flagship",
            id="model beats quality",
        ),
        pytest.param(
            {"prompt": "x", "tier": "efficient", "model": "flagship"},
            "efficient",
            id="tier beats model",
        ),
    ],
)
def test_requested_tier(body, tier) -> None:  # type: ignore[no-untyped-def]
    assert (
        requested_tier(parse_images_request(json.dumps(body).encode()), ["efficient", "flagship"])
        == tier
    )


def test_unknown_model_is_404_model_not_found() -> None:
    request = parse_images_request(b'{"prompt": "x", "model": "dall-e-3"}')
    with pytest.raises(Refused) as caught:
        requested_tier(request, ["efficient"])
    answer = error_answer(caught.value, "request-1")
    assert (answer.status, answer.body["error"]["code"], caught.value.param) == (
        404,
        "model_not_found",
        "model",
    )


@pytest.mark.parametrize(
    ("status", "detail", "failure"),
    [
        pytest.param(
            "StatusCode.UNAVAILABLE",
            "Exceeds maximum queue size",
            Failure.QUEUE_FULL,
            id="queue full",
        ),
        pytest.param(
            "StatusCode.UNAVAILABLE",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
            "Connection refused",
            Failure.CONNECT,
            id="connection refused",
        ),
        pytest.param(
            "StatusCode.UNAVAILABLE",
            DRAINING_REFUSAL,
            Failure.CONNECT,
            id="draining pod refused it: try another",
        ),
        pytest.param(
            "StatusCode.UNAVAILABLE",
            MODEL_FAILED_REFUSAL,
            Failure.CONNECT,
            id="a pod whose model failed refused it: try another",
        ),
        pytest.param(
            "StatusCode.UNAVAILABLE",
            "Socket closed",
            Failure.OTHER,
            id="dropped after sending is not retried",
        ),
        pytest.param(
            "StatusCode.UNAVAILABLE",
            "Request timeout expired",
            Failure.TIMEOUT,
            id="Triton queue timeout",
        ),
        pytest.param(
            "StatusCode.DEADLINE_EXCEEDED",
            "Deadline Exceeded",
            Failure.TIMEOUT,
            id="router deadline",
        ),
        pytest.param(
            "StatusCode.INVALID_ARGUMENT",
            "steps: 9 exceeds",
            Failure.INVALID,
            id="model refused inputs",
        ),
        pytest.param(
            "None",
            STEP_REFUSALS[Refusal.INFEASIBLE],
            Failure.QUEUE_FULL,
            id="step pod cannot meet the deadline: saturated, overflow",
        ),
        pytest.param(
            "None",
            STEP_REFUSALS[Refusal.DEADLINE].format(steps=3),
            Failure.TIMEOUT,
            id="step pod dropped it at its deadline",
        ),
        pytest.param(
            "None",
            STEP_REFUSALS[Refusal.QUEUE_FULL],
            Failure.QUEUE_FULL,
            id="step pod full",
        ),
        pytest.param(
            "None",
            DRAINING_REFUSAL,
            Failure.CONNECT,
            id="draining pod refused a stream message",
        ),
    ],
)
def test_classify_backend_errors(status: str, detail: str, failure: Failure) -> None:
    assert classify(status, detail) is failure


def _slice(service: str, port: int | None, endpoints: list[dict[str, object]]) -> dict[str, object]:
    ports = [{"name": "grpc", "port": port}, {"name": "http", "port": 8000}] if port else []
    return {
        "metadata": {"name": f"{service}-x", "labels": {"kubernetes.io/service-name": service}},
        "ports": ports,
        "endpoints": endpoints,
    }


def test_addresses_from_slices_keep_ready_grpc_endpoints() -> None:
    services = {"sd-efficient": "efficient", "sd-flagship": "flagship"}
    slices = [
        _slice(
            "sd-efficient",
            8001,
            [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.4"]},
            ],
        ),
        _slice("sd-efficient", 8001, [{"addresses": ["fd00::5"], "conditions": {"ready": True}}]),
        _slice("other", 8001, [{"addresses": ["10.9.9.9"]}]),
        _slice("sd-flagship", None, [{"addresses": ["10.0.1.1"]}]),
    ]
    assert addresses_from_slices(slices, services, "grpc") == {  # type: ignore[arg-type]
        "efficient": ("10.0.0.2:8001", "10.0.0.4:8001", "[fd00::5]:8001"),
        "flagship": (),
    }


def test_static_backends_file_errors_name_the_field() -> None:
    assert parse_static_backends('{"tiers": {"efficient": ["127.0.0.1:1"]}}') == {
        "efficient": ("127.0.0.1:1",)
    }
    with pytest.raises(ConfigError, match=r"tiers\.premium"):
        parse_static_backends('{"tiers": {"premium": []}}')


def test_openapi_document_describes_the_request_model() -> None:
    document = openapi_document()
    schema = document["components"]["schemas"]["ImagesRequest"]
    assert schema["required"] == ["prompt"]
    assert {"prompt", "n", "size", "tier", "steps", "seed", "negative_prompt"} <= set(
        schema["properties"]
    )
    assert schema["additionalProperties"] is False
    assert "422" in document["paths"]["/v1/images/generations"]["post"]["responses"]
    edit = document["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]
    edit_schema = document["components"]["schemas"]["EditRequest"]
    assert list(edit) == ["multipart/form-data"]
    assert edit_schema["required"] == ["image", "prompt"]
    assert {"image", "mask", "strength", "output_format"} <= set(edit_schema["properties"])


def test_an_open_endpoint_admits_everyone_as_anonymous() -> None:
    assert authenticate(None, None) == ANONYMOUS
    assert authenticate(None, "Bearer whatever") == ANONYMOUS


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        pytest.param(None, Reason.MISSING_API_KEY, id="no header: missing key"),
        pytest.param("Basic s3cret", Reason.MISSING_API_KEY, id="other scheme: missing key"),
        pytest.param("Bearer wrong", Reason.INVALID_API_KEY, id="unknown token: invalid key"),
    ],
)
def test_keyed_endpoint_refuses_without_a_known_key(
    tmp_path: Path, header: str | None, reason: Reason
) -> None:
    (tmp_path / "agents").write_text("s3cret")
    keys = load_api_keys(tmp_path)
    assert authenticate(keys, "Bearer s3cret") == "agents"
    with pytest.raises(Refused) as refused:
        authenticate(keys, header)
    assert refused.value.reason is reason


def test_body_guard_refuses_a_declared_size_without_reading() -> None:
    reads: list[int] = []

    async def read(n: int) -> bytes:
        reads.append(n)
        return b"x" * n

    with pytest.raises(Refused) as refused:
        asyncio.run(read_body(2000, read, limit=1024))
    assert (refused.value.reason, refused.value.param) == (Reason.BODY_TOO_LARGE, "body")
    assert reads == []


@pytest.mark.parametrize(
    ("size", "allowed"),
    [pytest.param(1024, True, id="at the limit"), pytest.param(1025, False, id="one byte over")],
)
def test_body_guard_counts_what_arrives_without_a_declared_size(size: int, allowed: bool) -> None:
    left = [size]

    async def read(n: int) -> bytes:  # what has arrived, then b"" at the end (StreamReader.read)
        taken = min(n, left[0])
        left[0] -= taken
        return b"x" * taken

    if allowed:
        assert asyncio.run(read_body(None, read, limit=1024)) == b"x" * size
    else:
        with pytest.raises(Refused):
            asyncio.run(read_body(None, read, limit=1024))


def test_rate_limiter_keeps_one_bucket_per_key_and_says_when_to_retry() -> None:
    limiter = RateLimiter()
    limit = RateLimitSpec(requests_per_minute_per_key=60, burst=2)
    for _ in range(2):
        limiter.admit("a", limit, now=0.0)
    limiter.admit("b", limit, now=0.0)  # another key has its own bucket
    with pytest.raises(Refused) as refused:
        limiter.admit("a", limit, now=0.0)
    assert (refused.value.reason, refused.value.retry_after_s) == (Reason.RATE_LIMITED, 1)
    limiter.admit("a", limit, now=1.0)


@pytest.mark.parametrize(
    ("header", "key_priority", "expected"),
    [(None, 0, 0), (None, 10, 10), ("-5", 10, -5), ("50", 10, 10), (" 3 ", 5, 3), ("+2", 0, 0)],
)
def test_request_priority_may_only_lower_the_keys(
    header: str | None, key_priority: int, expected: int
) -> None:
    assert request_priority(header, key_priority) == expected


@pytest.mark.parametrize("header", ["high", "1.5", "", "101", "-101", "99999999", "1e2"])
def test_a_bad_priority_header_is_refused_naming_it(header: str) -> None:
    with pytest.raises(Refused) as refused:
        request_priority(header, 0)
    assert refused.value.reason is Reason.INVALID_VALUE
    assert refused.value.param == PRIORITY_HEADER
