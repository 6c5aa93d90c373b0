"""Outlier ejection: thresholds, backoff, the tier's cap and what is not an outlier."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duotone_router.policy.outliers import (
    Cause,
    Ejection,
    Outcome,
    OutlierPolicy,
    PodHealth,
    ejected_count,
    ejection_allowed,
    observe,
)

POLICY = OutlierPolicy()
S, E, T, N = Outcome.SUCCESS, Outcome.ERROR, Outcome.TIMEOUT, Outcome.NEUTRAL
READY, NOT_READY, MISSED = Outcome.PROBE_READY, Outcome.PROBE_NOT_READY, Outcome.PROBE_MISSED


def run(
    outcomes: Sequence[Outcome], *, start: float = 100.0, may_eject: bool = True
) -> tuple[PodHealth, list[Ejection]]:
    """Feed `outcomes` one per 0.1 s; the final health and every ejection decided."""
    health, ejections = PodHealth(), []
    for index, outcome in enumerate(outcomes):
        health, ejection = observe(
            health, outcome, start + index * 0.1, POLICY, may_eject=may_eject
        )
        if ejection is not None:
            ejections.append(ejection)
    return health, ejections


@pytest.mark.parametrize(
    ("outcomes", "cause"),
    [
        pytest.param([E] * 5, Cause.ERRORS, id="5 internal errors in a row eject"),
        pytest.param([E, T, E, T, T], Cause.ERRORS, id="errors and timeouts count together"),
        pytest.param([E] * 4, None, id="4 errors in a row do not"),
        pytest.param([E, E, E, E, S, E], None, id="a success resets the count"),
        pytest.param(
            [E, E, N, E, E, E], Cause.ERRORS, id="a full queue or invalid input is neutral"
        ),
        pytest.param([N] * 50, None, id="refusing for a full queue is never an outlier"),
        pytest.param([Outcome.CONNECT], Cause.CONNECT, id="one failed connection ejects"),
        pytest.param(
            [MISSED, MISSED], Cause.UNRESPONSIVE, id="2 missed probes eject as unresponsive"
        ),
        pytest.param([MISSED, READY, MISSED], None, id="a ready probe resets the misses"),
        pytest.param([NOT_READY, NOT_READY], Cause.NOT_READY, id="2 not-ready answers eject"),
        pytest.param(
            [MISSED, S, MISSED], Cause.UNRESPONSIVE, id="a served call does not reset probe misses"
        ),
        pytest.param(
            [E, E, E, E, READY, E], Cause.ERRORS, id="a ready probe does not reset errors"
        ),
    ],
)
def test_what_ejects_a_pod(outcomes: list[Outcome], cause: Cause | None) -> None:
    _, ejections = run(outcomes)
    assert [e.cause for e in ejections] == ([cause] if cause else [])


def test_only_an_unresponsive_pod_has_its_calls_given_up() -> None:
    """A frozen pod will never answer them; a draining (not ready) one finishes them."""
    assert Ejection(1.0, Cause.UNRESPONSIVE).abandons_calls
    assert not Ejection(1.0, Cause.NOT_READY).abandons_calls
    assert not Ejection(1.0, Cause.ERRORS).abandons_calls


def test_ejections_back_off_and_reset_after_a_healthy_period() -> None:
    """5 s, 10 s, 20 s, 40 s, then 60 s at most; a pod back for 60 s starts at 5 s again."""
    health, lengths, now = PodHealth(), [], 0.0
    for _ in range(6):
        for _ in range(5):
            health, ejection = observe(health, E, now, POLICY, may_eject=True)
        assert ejection is not None
        lengths.append(ejection.until - now)
        now = ejection.until + 1.0  # fails again 1 s after it returns
    assert lengths == [5, 10, 20, 40, 60, 60]
    now = health.ejected_until + POLICY.healthy_reset_s
    for _ in range(5):
        health, ejection = observe(health, E, now, POLICY, may_eject=True)
    assert ejection is not None
    assert ejection.until - now == 5


def test_an_ejected_pod_is_out_until_its_ejection_ends() -> None:
    health, (ejection,) = run([E] * 5, start=0.0)
    assert health.ejected(ejection.until - 0.01)
    assert not health.ejected(ejection.until)


def test_an_ejected_pod_is_not_ejected_again() -> None:
    _, ejections = run([E] * 12)
    assert len(ejections) == 1


def test_missed_probes_keep_an_ejected_pod_out_while_they_last() -> None:
    """A frozen pod's ejection is held past each miss, so it never gets traffic between two
    probes; once it answers, its ejection runs out as decided."""
    health, (ejection,) = run([MISSED, MISSED], start=0.0)
    late = ejection.until - 0.5
    health, again = observe(health, MISSED, late, POLICY, may_eject=True)
    assert again is None
    assert health.ejected_until == late + POLICY.probe_hold_s
    health, _ = observe(health, READY, late + 1, POLICY, may_eject=True)
    assert health.ejected_until == late + POLICY.probe_hold_s


@pytest.mark.parametrize(
    ("outcomes", "ejected"),
    [
        pytest.param([E] * 5, False, id="errors past the cap do not eject"),
        pytest.param([MISSED] * 3, False, id="missed probes past the cap do not eject"),
        pytest.param([Outcome.CONNECT], True, id="an unreachable pod is ejected past the cap"),
    ],
)
def test_the_tiers_cap(outcomes: list[Outcome], ejected: bool) -> None:
    health, ejections = run(outcomes, may_eject=False)
    assert bool(ejections) is ejected
    assert health.ejected(100.0 + len(outcomes) * 0.1) is ejected


def test_a_pod_held_back_by_the_cap_is_ejected_once_the_cap_allows() -> None:
    health, ejections = run([E] * 7, may_eject=False)
    assert ejections == []
    health, ejection = observe(health, E, 200.0, POLICY, may_eject=True)
    assert ejection is not None
    assert ejection.cause is Cause.ERRORS


@pytest.mark.parametrize(
    ("ejected", "pods", "allowed"),
    [
        pytest.param(0, 1, False, id="the only pod of a tier is never ejected for its health"),
        pytest.param(0, 2, True, id="one of two may be out"),
        pytest.param(1, 2, False, id="not both of two"),
        pytest.param(1, 3, False, id="one of three (50% rounds down, at least one)"),
        pytest.param(1, 4, True, id="two of four"),
        pytest.param(2, 4, False, id="not three of four"),
        pytest.param(4, 10, True, id="five of ten"),
        pytest.param(5, 10, False, id="not six of ten"),
    ],
)
def test_ejection_allowed(ejected: int, pods: int, allowed: bool) -> None:
    assert ejection_allowed(ejected, pods, POLICY) is allowed


@given(
    st.integers(min_value=1, max_value=12),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=11), st.sampled_from([E, T, MISSED, S])),
        max_size=300,
    ),
)
def test_never_more_than_half_a_tier_out_for_its_health(
    pods: int, events: list[tuple[int, Outcome]]
) -> None:
    """Whatever the pods say, the cap holds (connection failures aside, which are not drawn)."""
    healths = [PodHealth() for _ in range(pods)]
    for step, (pod, outcome) in enumerate(events):
        now = step * 0.5
        index = pod % pods
        allowed = ejection_allowed(ejected_count(healths, now), pods, POLICY)
        healths[index], _ = observe(healths[index], outcome, now, POLICY, may_eject=allowed)
        assert ejected_count(healths, now) <= max(pods // 2, 1 if pods >= 2 else 0)
