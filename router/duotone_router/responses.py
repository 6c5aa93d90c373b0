"""HTTP shaping: refusal reasons to statuses and OpenAI error bodies, in one table.

Every error the endpoint answers has the OpenAI shape `{"error": {"message", "type", "param",
"code"}}` and an `X-Request-Id`; overload and rate-limit answers carry `Retry-After`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web

from duotone_router.dispatch import REJECTING_SECONDS
from duotone_router.images import REQUEST_ID_HEADER
from duotone_router.policy.reasons import Reason, Refused

log = logging.getLogger("duotone.router")

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
    "rate_limit_error",
    "overloaded_error",
    "server_error",
]

RETRY_OVERLOADED_S = max(1, round(REJECTING_SECONDS))
"""Retry-After of an overloaded tier: by then its queue-full mark has expired."""


@dataclass(frozen=True)
class Answer:
    """How one reason is answered."""

    status: int
    type: ErrorType
    code: str | None
    retry_after_s: int | None = None
    """Retry-After when the refusal gives none."""


ANSWERS: Mapping[Reason, Answer] = {
    Reason.INVALID_JSON: Answer(400, "invalid_request_error", "invalid_json"),
    Reason.UNREADABLE_BODY: Answer(400, "invalid_request_error", "invalid_body"),
    Reason.INVALID_FORM: Answer(400, "invalid_request_error", "invalid_form"),
    Reason.MODERATION_BLOCKED: Answer(400, "invalid_request_error", "moderation_blocked"),
    Reason.MISSING_API_KEY: Answer(401, "authentication_error", "missing_api_key"),
    Reason.INVALID_API_KEY: Answer(401, "authentication_error", "invalid_api_key"),
    Reason.TIER_SELECTION_DISABLED: Answer(403, "permission_error", None),
    Reason.UNKNOWN_MODEL: Answer(404, "not_found_error", "model_not_found"),
    Reason.ROUTE_NOT_FOUND: Answer(404, "not_found_error", None),
    Reason.METHOD_NOT_ALLOWED: Answer(405, "invalid_request_error", None),
    Reason.BODY_TOO_LARGE: Answer(413, "invalid_request_error", "too_large"),
    Reason.UNSUPPORTED_ENCODING: Answer(415, "invalid_request_error", "unsupported_encoding"),
    Reason.INVALID_VALUE: Answer(422, "invalid_request_error", "invalid_value"),
    Reason.TIER_NOT_SERVED: Answer(422, "invalid_request_error", "invalid_value"),
    Reason.RATE_LIMITED: Answer(429, "rate_limit_error", "rate_limit_exceeded"),
    Reason.COST_TOO_LARGE: Answer(422, "invalid_request_error", "cost_too_large"),
    Reason.TIER_NOT_ALLOWED: Answer(403, "permission_error", "tier_not_allowed"),
    Reason.INTERNAL_ERROR: Answer(500, "server_error", "internal_error"),
    Reason.UPSTREAM_FAILED: Answer(502, "server_error", "upstream"),
    Reason.NO_TIER: Answer(503, "overloaded_error", "tier_saturated", RETRY_OVERLOADED_S),
    Reason.TIER_SATURATED: Answer(503, "overloaded_error", "tier_saturated", RETRY_OVERLOADED_S),
    Reason.TIER_UNAVAILABLE: Answer(
        503, "overloaded_error", "tier_unavailable", RETRY_OVERLOADED_S
    ),
    Reason.DEADLINE_EXCEEDED: Answer(504, "server_error", "deadline_exceeded"),
}
"""The one table from refusal reasons to HTTP answers (tests/unit/router/test_http.py)."""

HTTP_REASONS: Mapping[int, Reason] = {404: Reason.ROUTE_NOT_FOUND, 405: Reason.METHOD_NOT_ALLOWED}
"""aiohttp's own answers (no route, wrong method) as reasons."""


@dataclass(frozen=True)
class ErrorAnswer:
    """A refusal as the HTTP response it becomes (pure)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def error_answer(refused: Refused, request_id: str) -> ErrorAnswer:
    """The status, OpenAI error body and headers of a refusal. A 5xx message ends with the
    request id, the one thing a client can quote to find the router's log of it."""
    answer = ANSWERS[refused.reason]
    message = refused.message
    if answer.status >= 500:
        message = f"{message} (request id {request_id})"
    headers = {REQUEST_ID_HEADER: request_id}
    retry_after = refused.retry_after_s or answer.retry_after_s
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    body = {
        "error": {
            "message": message,
            "type": answer.type,
            "param": refused.param,
            "code": answer.code,
        }
    }
    return ErrorAnswer(answer.status, body, headers)


def error_response(refused: Refused, request_id: str) -> web.Response:
    answer = error_answer(refused, request_id)
    return web.json_response(answer.body, status=answer.status, headers=answer.headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


INTERNAL_ERROR_MESSAGE = "the router failed to handle the request"
"""The whole message of an unexpected failure: its details go to the log, never to a client."""

REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("duotone_request_id", str)
"""Where a handler keeps the request's id on the request (`request[REQUEST_ID_KEY]`), so an
unexpected failure is answered and logged under the same id."""

ON_INTERNAL_ERROR: web.AppKey[Callable[[web.Request], None]] = web.AppKey("on_internal_error")
"""Optional callback of the application, called once per unexpected failure (e.g. to count
it in the request metrics)."""


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405 answers in the OpenAI error shape too, and the safety net: any
    exception a handler lets escape becomes a 500 in that shape with a generic message and the
    request id; the traceback goes to the log."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        reason = HTTP_REASONS.get(error.status)
        if error.status < 400 or reason is None:
            raise
        refused = Refused(reason, f"{request.method} {request.path}: {error.reason}")
        return error_response(refused, uuid.uuid4().hex)
    except Exception:
        request_id = request.get(REQUEST_ID_KEY) or uuid.uuid4().hex
        log.exception(
            "unexpected failure of %s %s (request id %s)", request.method, request.path, request_id
        )
        on_error = request.app.get(ON_INTERNAL_ERROR)
        if on_error is not None:
            on_error(request)
        return error_response(Refused(Reason.INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE), request_id)
