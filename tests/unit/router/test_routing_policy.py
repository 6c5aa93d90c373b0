"""Routing policy: named tier > weighted split > overflow, and least-outstanding pod choice."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duotone_contracts.latency import LatencyWindow
from duotone_router.policy.reasons import Reason
from duotone_router.policy.routing import (
    BackendLoad,
    TierLoad,
    TrafficPolicy,
    choose_tier,
    pending_refusal,
    pick_backend,
)

OK = TierLoad(ready_backends=2, slo_p50_ms=400)
FULL = TierLoad(ready_backends=2, slo_p50_ms=400, rejecting=True)
SLOW = TierLoad(ready_backends=2, slo_p50_ms=400, recent_p50_ms=900)
EMPTY = TierLoad(ready_backends=0, slo_p50_ms=400)
BOTH = {"efficient": OK, "flagship": OK}
SPLIT = TrafficPolicy(efficient_percent=80)


@pytest.mark.parametrize(
    ("requested", "policy", "loads", "draw", "tier", "kind", "degraded", "refusal"),
    [
        pytest.param(
            None,
            SPLIT,
            BOTH,
            0.1,
            "efficient",
            "split",
            False,
            None,
            id="draw below 80% -> efficient",
        ),
        pytest.param(
            None,
            SPLIT,
            BOTH,
            0.85,
            "flagship",
            "split",
            False,
            None,
            id="draw above 80% -> flagship",
        ),
        pytest.param(
            None,
            TrafficPolicy(100),
            BOTH,
            0.999,
            "efficient",
            "split",
            False,
            None,
            id="100% efficient never picks flagship",
        ),
        pytest.param(
            None,
            TrafficPolicy(0),
            BOTH,
            0.0,
            "flagship",
            "split",
            False,
            None,
            id="0% efficient always flagship",
        ),
        pytest.param(
            "flagship",
            SPLIT,
            BOTH,
            0.1,
            "flagship",
            "requested",
            False,
            None,
            id="named tier honoured over the split",
        ),
        pytest.param(
            "flagship",
            TrafficPolicy(80, client_tier_selection=False),
            BOTH,
            0.1,
            None,
            "rejected",
            False,
            Reason.TIER_SELECTION_DISABLED,
            id="named tier refused when selection is disabled",
        ),
        pytest.param(
            "flagship",
            SPLIT,
            {"efficient": OK},
            0.1,
            None,
            "rejected",
            False,
            Reason.TIER_NOT_SERVED,
            id="named tier that is not served",
        ),
        pytest.param(
            None,
            SPLIT,
            {"flagship": OK},
            0.1,
            "flagship",
            "split",
            False,
            None,
            id="single tier takes everything",
        ),
        pytest.param(
            "flagship",
            SPLIT,
            {"efficient": OK, "flagship": FULL},
            0.1,
            "efficient",
            "overflow",
            True,
            None,
            id="flagship queue full -> efficient, degraded",
        ),
        pytest.param(
            None,
            SPLIT,
            {"efficient": OK, "flagship": SLOW},
            0.9,
            "efficient",
            "overflow",
            True,
            None,
            id="flagship p50 over SLO -> efficient, degraded",
        ),
        pytest.param(
            None,
            TrafficPolicy(80, overflow="reject"),
            {"efficient": OK, "flagship": FULL},
            0.9,
            None,
            "rejected",
            False,
            Reason.TIER_SATURATED,
            id="flagship saturated with overflow reject -> refused, saturated",
        ),
        pytest.param(
            None,
            SPLIT,
            {"efficient": FULL, "flagship": OK},
            0.1,
            None,
            "rejected",
            False,
            Reason.TIER_SATURATED,
            id="efficient saturated never goes to flagship by default",
        ),
        pytest.param(
            None,
            TrafficPolicy(80, efficient_overflow="flagship"),
            {"efficient": FULL, "flagship": OK},
            0.1,
            "flagship",
            "overflow",
            False,
            None,
            id="efficient overflows to flagship only when configured",
        ),
        pytest.param(
            None,
            TrafficPolicy(80, overflow="reject"),
            {"efficient": OK, "flagship": SLOW},
            0.9,
            "flagship",
            "split",
            False,
            None,
            id="over SLO with nowhere to overflow is served late, not refused",
        ),
        pytest.param(
            None,
            SPLIT,
            {"efficient": SLOW, "flagship": OK},
            0.1,
            "efficient",
            "split",
            False,
            None,
            id="slow efficient tier keeps serving by default",
        ),
        pytest.param(
            None,
            SPLIT,
            {"efficient": FULL, "flagship": FULL},
            0.9,
            None,
            "rejected",
            False,
            Reason.TIER_SATURATED,
            id="both saturated -> refused, saturated",
        ),
        pytest.param(
            None,
            SPLIT,
            {"efficient": OK, "flagship": EMPTY},
            0.9,
            "efficient",
            "overflow",
            True,
            None,
            id="flagship at zero pods overflows while it wakes",
        ),
        pytest.param(
            None,
            TrafficPolicy(80, overflow="reject"),
            {"efficient": OK, "flagship": EMPTY},
            0.9,
            "flagship",
            "split",
            False,
            None,
            id="flagship at zero without overflow waits for a pod",
        ),
        pytest.param(
            None, SPLIT, {}, 0.5, None, "rejected", False, Reason.NO_TIER, id="no tier configured"
        ),
    ],
)
def test_choose_tier(requested, policy, loads, draw, tier, kind, degraded, refusal) -> None:  # noqa: PLR0917  # type: ignore[no-untyped-def]
    route = choose_tier(requested, policy, loads, draw)
    assert (route.tier, route.kind, route.degraded, route.refusal) == (
        tier,
        kind,
        degraded,
        refusal,
    )


def test_waiting_route_says_so_and_names_the_demand() -> None:
    route = choose_tier(None, TrafficPolicy(0, overflow="reject"), {"flagship": EMPTY}, 0.5)
    assert route.wait_for_backend
    assert route.chosen == "flagship"


def test_overflow_reason_carries_the_numbers() -> None:
    route = choose_tier("flagship", SPLIT, {"efficient": OK, "flagship": SLOW}, 0.5)
    assert (
        route.reason
        == "flagship overflowed to efficient: its recent p50 900 ms is above the SLO 400 ms"
    )


def test_split_over_many_draws_matches_the_weights() -> None:
    rng = random.Random(7)  # noqa: S311 - a seeded split, not cryptography
    counts = Counter(choose_tier(None, SPLIT, BOTH, rng.random()).tier for _ in range(10000))
    assert 7800 <= counts["efficient"] <= 8200


@given(st.integers(0, 100), st.floats(0, 1, exclude_max=True))
def test_split_picks_efficient_exactly_below_the_percent(percent: int, draw: float) -> None:
    route = choose_tier(None, TrafficPolicy(percent), BOTH, draw)
    assert (route.tier == "efficient") == (draw * 100 < percent)


@given(
    st.sampled_from([None, "efficient", "flagship"]),
    st.sampled_from([OK, FULL, SLOW, EMPTY]),
    st.sampled_from([OK, FULL, SLOW, EMPTY]),
    st.floats(0, 1, exclude_max=True),
)
def test_efficient_never_overflows_to_flagship_by_default(
    requested, efficient, flagship, draw
) -> None:  # type: ignore[no-untyped-def]
    route = choose_tier(requested, SPLIT, {"efficient": efficient, "flagship": flagship}, draw)
    if route.chosen == "efficient":
        assert route.tier in ("efficient", None)


@pytest.mark.parametrize(
    ("backends", "exclude", "turn", "picked"),
    [
        pytest.param(
            [BackendLoad("a", 3), BackendLoad("b", 1)],
            frozenset(),
            0,
            "b",
            id="least outstanding wins",
        ),
        pytest.param(
            [BackendLoad("a", 2), BackendLoad("b", 0), BackendLoad("c", 0)],
            frozenset(),
            1,
            "c",
            id="ties rotate with the turn",
        ),
        pytest.param(
            [BackendLoad("a", 0, available=False), BackendLoad("b", 5)],
            frozenset(),
            0,
            "b",
            id="ejected pods are skipped",
        ),
        pytest.param(
            [BackendLoad("a", 0), BackendLoad("b", 5)],
            frozenset({"a"}),
            0,
            "b",
            id="a pod already tried is skipped",
        ),
        pytest.param([BackendLoad("a", 0)], frozenset({"a"}), 0, None, id="nothing left"),
        pytest.param(
            [BackendLoad("a", 0, available=False), BackendLoad("b", 0)],
            frozenset({"b"}),
            0,
            None,
            id="a retry finds no other pod when the rest are ejected",
        ),
    ],
)
def test_pick_backend(backends, exclude, turn, picked) -> None:  # type: ignore[no-untyped-def]
    assert pick_backend(backends, exclude=exclude, turn=turn) == picked


def test_latency_window_needs_enough_recent_samples() -> None:
    window = LatencyWindow(window_s=10)
    for i in range(4):
        window = window.add(100.0 + i, 500.0)
    assert window.p50(104.0) is None  # 4 samples: too few to call a trend
    window = window.add(104.0, 100.0)
    assert window.p50(104.0) == 500.0
    assert window.p50(200.0) is None  # all aged out


def test_traffic_policy_refuses_impossible_percent() -> None:
    with pytest.raises(ValueError, match="between 0 and 100"):
        TrafficPolicy(efficient_percent=101)


@pytest.mark.parametrize(
    ("pending", "cap", "refused"),
    [
        pytest.param(0, 256, False, id="the first request may wait"),
        pytest.param(255, 256, False, id="the 256th request may wait"),
        pytest.param(256, 256, True, id="the 257th request is refused at once"),
        pytest.param(0, 0, True, id="a cap of 0 refuses every wait"),
    ],
)
def test_pending_cap(pending: int, cap: int, refused: bool) -> None:
    refusal = pending_refusal("flagship", pending, cap)
    assert (refusal is not None) is refused
    if refusal is not None:
        # 503 + Retry-After through the one answers table; the message names the tier.
        assert refusal.reason is Reason.TIER_SATURATED
        assert "flagship" in refusal.message


@pytest.mark.parametrize(
    ("requested", "allowed", "loads", "draw", "tier", "refusal"),
    [
        pytest.param(
            "flagship",
            frozenset({"efficient"}),
            BOTH,
            0.5,
            None,
            Reason.TIER_NOT_ALLOWED,
            id="a key naming a tier it may not use is refused",
        ),
        pytest.param(
            None,
            frozenset({"efficient"}),
            BOTH,
            0.99,
            "efficient",
            None,
            id="a key limited to efficient never draws flagship",
        ),
        pytest.param(
            None,
            frozenset({"flagship"}),
            {"efficient": OK, "flagship": FULL},
            0.1,
            None,
            Reason.TIER_SATURATED,
            id="a key limited to flagship never overflows to efficient",
        ),
        pytest.param(
            None,
            frozenset({"flagship"}),
            {"efficient": OK},
            0.1,
            None,
            Reason.TIER_NOT_ALLOWED,
            id="a key that may use no tier served here is refused",
        ),
        pytest.param(
            "flagship",
            None,
            BOTH,
            0.1,
            "flagship",
            None,
            id="a key without restrictions uses every tier",
        ),
    ],
)
def test_key_tier_restrictions(requested, allowed, loads, draw, tier, refusal) -> None:  # noqa: PLR0917  # type: ignore[no-untyped-def]
    route = choose_tier(requested, SPLIT, loads, draw, allowed)
    assert route.tier == tier
    assert route.refusal == refusal
