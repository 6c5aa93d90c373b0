"""Which tier serves a request, and which pod of it (pure; the random draw is an argument).

Order of precedence: a tier the client names (when allowed) > the weighted split > overflow
when the chosen tier is saturated. Overflow goes flagship -> efficient (marked degraded) or is
rejected, per `traffic.overflow`; efficient -> flagship only when `traffic.efficientOverflow`
says so. tests/unit/router/test_routing_policy.py pins every case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from duotone_contracts.api.v1alpha1 import (
    TIER_NAMES,
    EfficientOverflowPolicy,
    OverflowPolicy,
    TierName,
)
from duotone_contracts.routing_table import Traffic
from duotone_router.policy.reasons import Reason, Refused


@dataclass(frozen=True)
class TrafficPolicy:
    """The routing table's `traffic` section."""

    efficient_percent: int
    client_tier_selection: bool = True
    overflow: OverflowPolicy = "efficient"
    efficient_overflow: EfficientOverflowPolicy = "reject"

    def __post_init__(self) -> None:
        if not 0 <= self.efficient_percent <= 100:
            raise ValueError("efficient_percent must be between 0 and 100")

    @classmethod
    def of(cls, traffic: Traffic) -> TrafficPolicy:
        """The routing table's `traffic` section as a policy."""
        return cls(
            efficient_percent=traffic.efficient_percent,
            client_tier_selection=traffic.client_tier_selection,
            overflow=traffic.overflow,
            efficient_overflow=traffic.efficient_overflow,
        )


@dataclass(frozen=True)
class TierLoad:
    """What one router knows about a tier right now."""

    ready_backends: int
    slo_p50_ms: float
    recent_p50_ms: float | None = None
    """Median latency of this router's recent requests to the tier (None: too few)."""
    rejecting: bool = False
    """A backend of the tier refused a request for a full queue within the recent window."""

    def saturation(self) -> str | None:
        """Why the tier should not take another request now, or None when it can.

        A tier with no ready pods is not saturated here: it may be scaling up from zero, so the
        caller waits for a pod (see `Route.wait_for_backend`) unless overflow can serve at once.
        """
        if self.rejecting:
            return "its queue is full"
        return self.over_slo()

    def over_slo(self) -> str | None:
        """The latency half of saturation: worth diverting from, never worth refusing for."""
        if self.recent_p50_ms is not None and self.recent_p50_ms > self.slo_p50_ms:
            return (
                f"its recent p50 {self.recent_p50_ms:.0f} ms is above the SLO "
                f"{self.slo_p50_ms:.0f} ms"
            )
        return None


RouteKind = Literal["requested", "split", "overflow", "rejected"]


@dataclass(frozen=True)
class Route:
    """The routing decision for one request."""

    kind: RouteKind
    tier: TierName | None
    """The tier to call (None when rejected)."""
    chosen: TierName | None
    """The tier the request wanted before overflow (what the autoscaler counts as demand)."""
    reason: str
    refusal: Reason | None = None
    """Why a rejected request is refused (None when it is served)."""
    wait_for_backend: bool = False
    """The tier has no ready pod yet; wait for one until the tier's deadline."""

    @property
    def degraded(self) -> bool:
        """Served by the efficient tier although the flagship was wanted."""
        return self.kind == "overflow" and self.tier == "efficient" and self.chosen == "flagship"


def _other(tier: TierName) -> TierName:
    return "flagship" if tier == "efficient" else "efficient"


def overflow_target(tier: TierName, policy: TrafficPolicy) -> TierName | None:
    """Where a saturated tier's requests go, or None to reject them."""
    if tier == "flagship":
        return "efficient" if policy.overflow == "efficient" else None
    return "flagship" if policy.efficient_overflow == "flagship" else None


def split_tier(policy: TrafficPolicy, present: Sequence[TierName], draw: float) -> TierName:
    """Weighted split: `draw` in [0, 1) below efficientPercent/100 goes to the efficient tier."""
    if len(present) == 1:
        return present[0]
    return "efficient" if draw * 100 < policy.efficient_percent else "flagship"


def choose_tier(
    requested: TierName | None,
    policy: TrafficPolicy,
    loads: Mapping[TierName, TierLoad],
    draw: float,
    allowed: frozenset[TierName] | None = None,
) -> Route:
    """Route one request. `loads` holds the tiers this endpoint serves; `draw` is in [0, 1);
    `allowed` the tiers the client's key may use (None: all), which neither a split nor an
    overflow leaves.

    e.g. 80/20 split, draw 0.9 -> flagship; flagship's queue full and overflow "efficient"
    -> efficient, degraded.
    """
    present = [tier for tier in TIER_NAMES if tier in loads]
    if not present:
        return Route("rejected", None, None, "no tier is configured", Reason.NO_TIER)
    if requested is not None:
        if not policy.client_tier_selection:
            return Route(
                "rejected",
                None,
                requested,
                "tier: client tier selection is disabled for this endpoint",
                Reason.TIER_SELECTION_DISABLED,
            )
        if requested not in loads:
            return Route(
                "rejected",
                None,
                requested,
                f"tier: {requested!r} is not served here; available: {', '.join(present)}",
                Reason.TIER_NOT_SERVED,
            )
    if allowed is not None:
        refusal = _key_refusal(requested, present, allowed)
        if refusal is not None:
            return refusal
        loads = allowed_loads(loads, allowed)
        present = [tier for tier in present if tier in allowed]
    if requested is not None:
        return place(requested, "requested", policy, loads)
    return place(split_tier(policy, present, draw), "split", policy, loads)


def _key_refusal(
    requested: TierName | None, present: Sequence[TierName], allowed: frozenset[TierName]
) -> Route | None:
    """A request refused because its key may not use the tier it names, or any tier here."""
    if requested is not None and requested not in allowed:
        why = f"tier: this API key may not use the {requested} tier"
        return Route("rejected", None, requested, why, Reason.TIER_NOT_ALLOWED)
    if not any(tier in allowed for tier in present):
        why = "this API key may use none of the tiers served here"
        return Route("rejected", None, None, why, Reason.TIER_NOT_ALLOWED)
    return None


def allowed_loads(
    loads: Mapping[TierName, TierLoad], allowed: frozenset[TierName] | None
) -> Mapping[TierName, TierLoad]:
    """The loads of the tiers a key may use (all with None): what routing and overflow see."""
    if allowed is None:
        return loads
    return {tier: load for tier, load in loads.items() if tier in allowed}


def place(
    chosen: TierName,
    kind: Literal["requested", "split"],
    policy: TrafficPolicy,
    loads: Mapping[TierName, TierLoad],
) -> Route:
    """Serve `chosen` if it can take the request, else overflow or reject per the policy.

    Also used again after a pod refuses a request for a full queue: the same choice, placed
    with fresh loads, overflows without redrawing the split.
    """
    if kind == "requested":
        why = f"the client asked for {chosen}"
    else:
        why = f"weighted split ({policy.efficient_percent}% efficient)"
    load = loads[chosen]
    saturation = load.saturation()
    if saturation is None and load.ready_backends > 0:
        return Route(kind, chosen, chosen, why)
    target = overflow_target(chosen, policy)
    target_load = loads.get(target) if target is not None else None
    target_ok = (
        target_load is not None
        and target_load.ready_backends > 0
        and target_load.saturation() is None
    )
    if target is not None and target_ok:
        cause = saturation or "it has no ready pod"
        return Route("overflow", target, chosen, f"{chosen} overflowed to {target}: {cause}")
    if saturation is None:
        # No pod yet (e.g. scaled to zero): wait for one; the pending count wakes the tier.
        return Route(kind, chosen, chosen, f"{why}; waiting for a ready pod", wait_for_backend=True)
    if not load.rejecting:
        # Slow but accepting, and nowhere better to go: serve it late rather than refuse it.
        # A 503 here would turn a latency miss into an outage; the autoscaler fixes latency.
        # tests/unit/router/test_routing_policy.py: "over SLO with nowhere to overflow".
        return Route(
            kind,
            chosen,
            chosen,
            f"{why}; {saturation}",
            wait_for_backend=load.ready_backends == 0,
        )
    return Route(
        "rejected", None, chosen, f"{chosen} is saturated: {saturation}", Reason.TIER_SATURATED
    )


def pending_refusal(tier: str, pending: int, max_pending: int) -> Refused | None:
    """Refuse a request that would wait for a pod of `tier` while `pending` already do, when
    that reaches `max_pending` (the routing table's cap per tier); None: it may wait.

    e.g. cap 256: the 257th request waiting for a tier at zero gets 503 + Retry-After at once,
    so a burst against a tier with no pod costs the router bounded memory.
    """
    if pending < max_pending:
        return None
    return Refused(
        Reason.TIER_SATURATED,
        f"the {tier} tier has no pod free and {pending} requests are already waiting for one",
    )


@dataclass(frozen=True)
class BackendLoad:
    """One pod of a tier as the router sees it."""

    address: str
    outstanding: int
    available: bool = True
    """False while the pod is ejected (`policy.outliers`)."""


def pick_backend(
    backends: Sequence[BackendLoad], *, exclude: frozenset[str] = frozenset(), turn: int = 0
) -> str | None:
    """Least outstanding requests among available pods; ties rotate with `turn`.

    e.g. outstanding [2, 0, 0], turn 1 -> the third pod (second of the tied pair).
    """
    candidates = [b for b in backends if b.available and b.address not in exclude]
    if not candidates:
        return None
    fewest = min(b.outstanding for b in candidates)
    tied = [b for b in candidates if b.outstanding == fewest]
    return tied[turn % len(tied)].address
