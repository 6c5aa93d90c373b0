"""HTTP shaping: every refusal reason has one answer, in the OpenAI error shape."""

from __future__ import annotations

import pytest

from duotone_router.policy.reasons import Reason, Refused
from duotone_router.responses import ANSWERS, error_answer

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
    assert answer.body == {
        "error": {"message": "why", "type": kind, "param": "field", "code": code}
    }
    assert answer.headers.get("Retry-After") == retry_after
    assert answer.headers["X-Request-Id"] == "req-1"


def test_a_refusals_own_retry_after_wins() -> None:
    answer = error_answer(Refused(Reason.RATE_LIMITED, "slow down", retry_after_s=7), "r")
    assert (answer.status, answer.headers["Retry-After"]) == (429, "7")
