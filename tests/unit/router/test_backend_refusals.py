"""A failed backend call as the client sees it: the tier's words, nothing internal."""

from __future__ import annotations

import pytest

from duotone_router.backends import OUTCOMES, BackendError, Failure
from duotone_router.dispatch import RETRIED, backend_refusal
from duotone_router.policy.outliers import Outcome
from duotone_router.policy.reasons import Reason
from duotone_router.responses import ANSWERS

ADDRESS = "10.42.0.17:8001"
DETAIL = (
    "[StatusCode.INTERNAL] Failed to process the request(s) for model 'duotone_0_0', "
    "message: OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB"
)


@pytest.mark.parametrize(
    ("failure", "reason", "says"),
    [
        pytest.param(Failure.OTHER, Reason.UPSTREAM_FAILED, "failed", id="internal error -> 502"),
        pytest.param(Failure.CONNECT, Reason.TIER_UNAVAILABLE, "reached", id="unreachable -> 503"),
        pytest.param(
            Failure.UNRESPONSIVE,
            Reason.TIER_UNAVAILABLE,
            "stopped answering",
            id="unresponsive -> 503",
        ),
        pytest.param(
            Failure.QUEUE_FULL, Reason.TIER_SATURATED, "saturated", id="queue full -> 503"
        ),
        pytest.param(Failure.TIMEOUT, Reason.DEADLINE_EXCEEDED, "deadline", id="timeout -> 504"),
    ],
)
def test_a_5xx_names_the_tier_and_nothing_internal(
    failure: Failure, reason: Reason, says: str
) -> None:
    refused = backend_refusal("flagship", BackendError(failure, ADDRESS, DETAIL))
    assert refused.reason is reason
    assert ANSWERS[reason].status >= 500
    assert "flagship" in refused.message
    assert says in refused.message
    for internal in ("10.42.0.17", "8001", "StatusCode", "OutOfMemoryError", "duotone_0_0"):
        assert internal not in refused.message


def test_an_input_the_model_refused_keeps_the_field_to_fix() -> None:
    """422, not 5xx: the model's message says which field is wrong."""
    refused = backend_refusal("efficient", BackendError(Failure.INVALID, ADDRESS, "steps: > 8"))
    assert refused.reason is Reason.INVALID_VALUE
    assert refused.message == "steps: > 8"


@pytest.mark.parametrize(
    ("failure", "retried", "outcome"),
    [
        pytest.param(Failure.OTHER, True, Outcome.ERROR, id="internal error: retried, counts"),
        pytest.param(Failure.CONNECT, True, Outcome.CONNECT, id="unreachable: retried, ejects"),
        pytest.param(
            Failure.UNRESPONSIVE, True, Outcome.NEUTRAL, id="given up on a frozen pod: retried"
        ),
        pytest.param(
            Failure.QUEUE_FULL, False, Outcome.NEUTRAL, id="queue full: overflow path, no outlier"
        ),
        pytest.param(Failure.INVALID, False, Outcome.NEUTRAL, id="invalid: never retried"),
        pytest.param(Failure.TIMEOUT, False, Outcome.TIMEOUT, id="timeout: no time left, counts"),
    ],
)
def test_which_failures_are_retried_and_what_they_say_about_the_pod(
    failure: Failure, retried: bool, outcome: Outcome
) -> None:
    assert (failure in RETRIED) is retried
    assert OUTCOMES[failure] is outcome
