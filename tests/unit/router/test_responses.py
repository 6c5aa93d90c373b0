"""HTTP shaping: every refusal reason has one answer, in the OpenAI error shape."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from duotone_router.policy.reasons import Reason, Refused
from duotone_router.responses import (
    ANSWERS,
    INTERNAL_ERROR_MESSAGE,
    ON_INTERNAL_ERROR,
    REQUEST_ID_KEY,
    Handler,
    error_answer,
    openai_errors,
)

pytestmark = pytest.mark.unit


def test_every_reason_has_an_answer_in_the_one_table() -> None:
    assert set(ANSWERS) == set(Reason)


@pytest.mark.parametrize(
    ("reason", "status", "kind", "code", "retry_after"),
    [
        pytest.param(
            Reason.INVALID_JSON,
            400,
            "invalid_request_error",
            "invalid_json",
            None,
            id="malformed JSON: 400",
        ),
        pytest.param(
            Reason.UNREADABLE_BODY,
            400,
            "invalid_request_error",
            "invalid_body",
            None,
            id="broken chunked framing: 400",
        ),
        pytest.param(
            Reason.UNSUPPORTED_ENCODING,
            415,
            "invalid_request_error",
            "unsupported_encoding",
            None,
            id="compressed body: 415",
        ),
        pytest.param(
            Reason.INTERNAL_ERROR,
            500,
            "server_error",
            "internal_error",
            None,
            id="the router failed: 500",
        ),
        pytest.param(
            Reason.MISSING_API_KEY,
            401,
            "authentication_error",
            "missing_api_key",
            None,
            id="no key: 401",
        ),
        pytest.param(
            Reason.TIER_SELECTION_DISABLED,
            403,
            "permission_error",
            None,
            None,
            id="tier selection off: 403",
        ),
        pytest.param(
            Reason.UNKNOWN_MODEL,
            404,
            "not_found_error",
            "model_not_found",
            None,
            id="unknown model: 404",
        ),
        pytest.param(
            Reason.BODY_TOO_LARGE,
            413,
            "invalid_request_error",
            "too_large",
            None,
            id="body too large: 413",
        ),
        pytest.param(
            Reason.INVALID_VALUE,
            422,
            "invalid_request_error",
            "invalid_value",
            None,
            id="bad field: 422",
        ),
        pytest.param(
            Reason.TIER_NOT_SERVED,
            422,
            "invalid_request_error",
            "invalid_value",
            None,
            id="tier not served: 422",
        ),
        pytest.param(
            Reason.UPSTREAM_FAILED, 502, "server_error", "upstream", None, id="tier failed: 502"
        ),
        pytest.param(
            Reason.TIER_SATURATED,
            503,
            "overloaded_error",
            "tier_saturated",
            "1",
            id="saturated: 503, retry in 1 s",
        ),
        pytest.param(
            Reason.TIER_UNAVAILABLE,
            503,
            "overloaded_error",
            "tier_unavailable",
            "1",
            id="no pod reachable: 503",
        ),
        pytest.param(
            Reason.DEADLINE_EXCEEDED,
            504,
            "server_error",
            "deadline_exceeded",
            None,
            id="deadline: 504",
        ),
    ],
)
def test_reasons_map_to_statuses_types_and_codes(
    reason: Reason, status: int, kind: str, code: str | None, retry_after: str | None
) -> None:
    answer = error_answer(Refused(reason, "why", param="field"), "req-1")
    assert answer.status == status
    message = "why" if status < 500 else "why (request id req-1)"
    assert answer.body == {
        "error": {"message": message, "type": kind, "param": "field", "code": code}
    }
    assert answer.headers.get("Retry-After") == retry_after
    assert answer.headers["X-Request-Id"] == "req-1"


def test_a_refusals_own_retry_after_wins() -> None:
    answer = error_answer(Refused(Reason.RATE_LIMITED, "slow down", retry_after_s=7), "r")
    assert (answer.status, answer.headers["Retry-After"]) == (429, "7")


@pytest.mark.parametrize(
    ("reason", "names_the_id"),
    [
        pytest.param(Reason.UPSTREAM_FAILED, True, id="502 names the request id"),
        pytest.param(Reason.TIER_UNAVAILABLE, True, id="503 names the request id"),
        pytest.param(Reason.INVALID_VALUE, False, id="422 does not"),
    ],
)
def test_server_errors_end_with_the_request_id(reason: Reason, names_the_id: bool) -> None:
    answer = error_answer(Refused(reason, "tier flagship failed"), "3f2a")
    message = answer.body["error"]["message"]
    assert message.endswith("(request id 3f2a)") is names_the_id


def _call(handler: Handler, request: web.Request) -> tuple[web.Response, str]:
    """The middleware's response to `request` and its body text."""
    response = asyncio.run(openai_errors(request, handler))
    assert isinstance(response, web.Response)
    assert response.text is not None
    return response, response.text


def _app(on_internal_error: Callable[[web.Request], None] | None = None) -> web.Application:
    app = web.Application()
    if on_internal_error is not None:
        app[ON_INTERNAL_ERROR] = on_internal_error
    return app


def test_an_escaping_exception_becomes_a_500_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: list[str] = []
    request = make_mocked_request(
        "POST",
        "/v1/images/generations",
        app=_app(on_internal_error=lambda r: counted.append(r.path)),
    )
    request[REQUEST_ID_KEY] = "req-9"

    async def broken(_: web.Request) -> web.Response:
        raise RuntimeError("OutOfMemoryError at 10.0.0.7:8001")

    with caplog.at_level(logging.ERROR, logger="duotone.router"):
        response, text = _call(broken, request)
    assert response.status == 500
    error = json.loads(text)["error"]
    assert error == {
        "message": f"{INTERNAL_ERROR_MESSAGE} (request id req-9)",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    assert response.headers["X-Request-Id"] == "req-9"
    assert "10.0.0.7" not in text
    assert counted == ["/v1/images/generations"]
    logged = caplog.records[-1]
    assert "req-9" in logged.getMessage()
    assert logged.exc_info is not None
    assert "OutOfMemoryError" in str(logged.exc_info[1])


def test_an_escaping_exception_without_a_request_id_gets_a_fresh_one() -> None:
    async def broken(_: web.Request) -> web.Response:
        raise ValueError("boom")

    response, text = _call(broken, make_mocked_request("GET", "/v1/models", app=_app()))
    request_id = response.headers["X-Request-Id"]
    assert len(request_id) == 32
    assert request_id in text
    assert "boom" not in text


def test_aiohttp_not_found_is_answered_in_the_openai_shape() -> None:
    async def missing(_: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    response, text = _call(missing, make_mocked_request("GET", "/nowhere", app=_app()))
    assert response.status == 404
    assert json.loads(text)["error"]["type"] == "not_found_error"
