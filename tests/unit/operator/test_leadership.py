"""Which replica writes: the Lease decisions (pure, scripted time)."""

from __future__ import annotations

import pytest

from duotone_operator.policy.leadership import (
    LeaseRecord,
    LeaseTiming,
    lease_action,
    still_leading,
)

pytestmark = pytest.mark.unit

HELD = LeaseRecord(holder="operator-a", version="7", lease_seconds=15)


@pytest.mark.parametrize(
    ("record", "me", "unchanged_since", "now", "action"),
    [
        pytest.param(None, "operator-b", 0, 0, "create", id="no Lease yet: create it"),
        pytest.param(HELD, "operator-a", 0, 100, "renew", id="mine: renew"),
        pytest.param(HELD, "operator-b", 100, 114.9, "wait", id="held and fresh: stand by"),
        pytest.param(HELD, "operator-b", 100, 115, "take", id="unchanged a whole lease: take"),
        pytest.param(
            LeaseRecord(holder="", version="8", lease_seconds=15),
            "operator-b",
            100,
            100,
            "take",
            id="released at shutdown: take at once",
        ),
    ],
)
def test_lease_action(
    record: LeaseRecord | None, me: str, unchanged_since: float, now: float, action: str
) -> None:
    assert lease_action(record, me, unchanged_since=unchanged_since, now=now) == action


def test_expiry_is_judged_on_the_observers_clock_not_the_holders_timestamps() -> None:
    """A standby whose clock is far ahead still waits a whole lease from when it first saw the
    record: nothing in the decision reads the renewTime another node wrote."""
    first_seen = 5_000.0
    assert lease_action(HELD, "operator-b", unchanged_since=first_seen, now=first_seen) == "wait"
    assert lease_action(HELD, "operator-b", unchanged_since=first_seen, now=first_seen + 15) == (
        "take"
    )


def test_a_leader_stops_before_its_lease_can_be_taken() -> None:
    timing = LeaseTiming.for_lease(15)
    assert (timing.renew_seconds, timing.renew_deadline_seconds) == (5, 10)
    assert still_leading(100, 109.9, timing)
    assert not still_leading(100, 110, timing)
    # A standby takes over only after a whole lease unchanged: later than the leader gives up.
    assert timing.renew_deadline_seconds < timing.lease_seconds


def test_timing_must_leave_room_to_renew() -> None:
    with pytest.raises(ValueError, match="renew"):
        LeaseTiming(lease_seconds=10, renew_seconds=10, renew_deadline_seconds=12)
