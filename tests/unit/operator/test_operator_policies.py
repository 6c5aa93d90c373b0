"""Pure pieces of the operator shell: watch freshness and retry backoff (scripted time)."""

from __future__ import annotations

import pytest

from duotone_operator.policy.backoff import retry_delay
from duotone_operator.policy.freshness import WatchFreshness


@pytest.mark.parametrize(
    ("retry", "delay"),
    [
        pytest.param(0, 5.0, id="first retry after the base delay"),
        pytest.param(3, 40.0, id="doubling each time"),
        pytest.param(6, 300.0, id="capped"),
        pytest.param(60, 300.0, id="huge retry counts stay capped"),
    ],
)
def test_retry_delay(retry: int, delay: float) -> None:
    assert retry_delay(retry, base_seconds=5, max_seconds=300) == delay


def test_retry_delay_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="from 0"):
        retry_delay(-1, base_seconds=5, max_seconds=300)


def test_watch_in_step_with_the_api_is_fresh() -> None:
    tracker = WatchFreshness(grace_seconds=60)
    tracker.delivered("a", "10")
    assert tracker.stale({"a": "10"}, now=1000.0) == []


def test_lag_within_the_grace_period_is_tolerated_then_reported() -> None:
    tracker = WatchFreshness(grace_seconds=60)
    tracker.delivered("a", "10")
    listed = {"a": "11"}  # the API moved on; the watch has not delivered it yet
    assert tracker.stale(listed, now=1000.0) == []
    assert tracker.stale(listed, now=1059.0) == []
    assert tracker.stale(listed, now=1061.0) == ["a"], "a dead watch fails liveness"


def test_delivery_clears_the_lag() -> None:
    tracker = WatchFreshness(grace_seconds=60)
    assert tracker.stale({"a": "11"}, now=1000.0) == []
    tracker.delivered("a", "11")
    assert tracker.stale({"a": "11"}, now=2000.0) == []


def test_deleted_objects_are_forgotten() -> None:
    tracker = WatchFreshness(grace_seconds=1)
    tracker.delivered("a", "10")
    tracker.delivered("a", "12", deleted=True)
    assert tracker.stale({}, now=1000.0) == []
    assert tracker.seen == {}
