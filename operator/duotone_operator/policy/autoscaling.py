"""How many replicas each tier should run, from queue depth and p50 latency (pure).

`decide(observation, spec, state, now) -> (decision, new_state)` for one tier, then
`share_gpu_budget` over both. The caller reads metrics, patches `/scale`, posts events and
exports metrics; nothing here reads a clock or does I/O.

The rules, in order:
1. Queue recommendation: ceil((queued + executing + router pending) / target per replica).
2. Latency recommendation: p50 above SLO x (1 + tolerance) scales in proportion
   (p50 900 ms, SLO 400 ms, 2 replicas -> ceil(2 x 2.25) = 5); inside the band it holds the
   current size; below the SLO it asks for nothing. The larger recommendation wins.
3. Clamp to max; to min, where `min: 0` counts only after the tier has been idle (no queue,
   no pending, no new router demand) for `scaleToZeroIdleSeconds`. Router demand or pending
   requests wake a tier at zero.
4. Up at once, at most x2 or +4 per step (whichever is more); panic (a recommendation at least
   three times the current size) lifts that cap and forbids scaling down for
   `PANIC_HOLD_SECONDS`.
5. Down only to the highest recommendation inside the stabilization window.
6. Missing or stale metrics hold the current size (a wake-up still happens): never down.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

from duotone_contracts.api.v1alpha1 import TIER_NAMES, ImageModelDeployment, TierName

GROWTH_FACTOR = 2.0
GROWTH_MIN_STEP = 4
"""Normal growth per decision: x2 or +4, whichever is more (HPA's default scale-up policy)."""
PANIC_RATIO = 3.0
"""A recommendation this many times the current size is a burst. Knative panics at 2x averaged
over 6 s; a reading here is one instant, so the bar is higher and x2 growth stays capped."""
PANIC_HOLD_SECONDS = 60.0
STALE_AFTER_SECONDS = 30.0
"""Metrics older than this are treated as missing."""

Direction = Literal["up", "down", "none"]
Cause = Literal["wake", "queue", "latency", "bounds", "budget", "idle", "demand", "none"]
"""One word for why a tier changed size (a bounded label for dashboards; `reason` has numbers)."""
CAUSES_BY_DIRECTION: dict[Direction, tuple[Cause, ...]] = {
    "up": ("wake", "queue", "latency", "bounds"),
    "down": ("budget", "idle", "bounds", "demand"),
}
"""Every cause `ScaleDecision.cause` gives for each direction."""


@dataclass(frozen=True)
class ScalingSpec:
    """What `decide` needs of one tier's spec."""

    minimum: int
    maximum: int
    target_queue_per_replica: float
    slo_p50_ms: float
    latency_tolerance: float
    """Fraction above the SLO that is still tolerated (0.1 = 10 %)."""
    stabilization_seconds: float
    scale_to_zero_idle_seconds: float
    gpus_per_replica: int = 1


def scaling_spec(imd: ImageModelDeployment, tier: TierName) -> ScalingSpec:
    """The ScalingSpec of one present tier."""
    spec = imd.spec.tiers.present()[tier]
    autoscaling = imd.spec.autoscaling
    return ScalingSpec(
        minimum=spec.replicas.minimum,
        maximum=spec.replicas.maximum,
        target_queue_per_replica=autoscaling.target_queue_depth_per_replica,
        slo_p50_ms=float(spec.slo.p50_latency_ms),
        latency_tolerance=autoscaling.latency_tolerance_percent / 100,
        stabilization_seconds=float(autoscaling.scale_down_stabilization_seconds),
        scale_to_zero_idle_seconds=float(autoscaling.scale_to_zero_idle_seconds),
        gpus_per_replica=spec.resources.gpus,
    )


@dataclass(frozen=True)
class TierMetrics:
    """What a metric source read about one tier; None where it could not tell."""

    at: float | None
    """When the newest complete reading was taken (same clock as `now`); None: read failed."""
    queued: float | None = None
    """Requests waiting in the pods' queues (Triton's pending count), all pods together."""
    executing: float | None = None
    """Requests the pods are running now."""
    p50_latency_ms: float | None = None
    router_pending: float = 0.0
    """Requests waiting in the routers for a ready pod of this tier."""
    demand_total: float | None = None
    """The routers' counter of requests that wanted this tier (before any overflow)."""


@dataclass(frozen=True)
class TierObservation:
    """One tier at one moment: its Deployment and its metrics."""

    replicas: int
    """The Deployment's spec.replicas."""
    ready_pods: int
    metrics: TierMetrics


@dataclass(frozen=True)
class ScaleState:
    """What `decide` remembers between calls for one tier."""

    history: tuple[tuple[float, int], ...] = ()
    """(time, recommendation) inside the stabilization window, oldest first."""
    last_busy: float | None = None
    """Last time the tier had work, pending requests or new demand."""
    demand_total: float | None = None
    panic_until: float | None = None


def initial_state(replicas: int, now: float) -> ScaleState:
    """The state of a tier first seen (or after a restart): its current size counts as a
    recommendation, so a restarted operator never scales down before a full window."""
    return ScaleState(history=((now, replicas),), last_busy=now)


@dataclass(frozen=True)
class ScaleDecision:
    """What one tier should run, and why."""

    replicas: int
    current: int
    reason: str
    queue_recommendation: int | None = None
    latency_recommendation: int | None = None
    wanted: int | None = None
    """Replicas wanted before the GPU budget (None: same as `replicas`)."""
    panic: bool = False
    held: bool = False
    """Metrics were missing or stale, so the size was held."""
    budget_limited: bool = False
    queue_depth: float | None = None
    p50_latency_ms: float | None = None

    @property
    def direction(self) -> Direction:
        if self.replicas > self.current:
            return "up"
        if self.replicas < self.current:
            return "down"
        return "none"

    @property
    def cause(self) -> Cause:
        """Up: wake (from zero), queue or latency (the larger recommendation), bounds (min).
        Down: budget (GPU budget), idle (to zero), bounds (max lowered) or demand (window)."""
        queue, latency = self.queue_recommendation or 0, self.latency_recommendation or 0
        if self.direction == "up":
            if self.current == 0:
                return "wake"
            if self.replicas > max(queue, latency):
                return "bounds"
            return "latency" if latency > queue else "queue"
        if self.direction == "down":
            return self._down_cause(max(queue, latency))
        return "none"

    def _down_cause(self, wanted: int) -> Cause:
        if self.budget_limited:
            return "budget"
        if self.replicas == 0:
            return "idle"
        return "bounds" if self.replicas < wanted else "demand"


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _fmt(value: float) -> str:
    return f"{value:g}" if value == int(value) else f"{value:.1f}"


def _new_demand(metrics: TierMetrics, state: ScaleState) -> bool:
    """The routers' demand counter moved since the last reading (a reset counts as moved)."""
    if metrics.demand_total is None or state.demand_total is None:
        return False
    return metrics.demand_total != state.demand_total


def _pod_load(observation: TierObservation) -> float | None:
    """Queued plus executing requests in the pods; None when unknown. At zero replicas there is
    no pod to report a queue: it is empty by definition."""
    m = observation.metrics
    if observation.replicas == 0:
        return 0.0
    if m.queued is None or m.executing is None:
        return None
    return m.queued + m.executing


def _hold(
    observation: TierObservation,
    spec: ScalingSpec,
    next_state: ScaleState,
    *,
    woken: bool,
    why: str,
) -> tuple[ScaleDecision, ScaleState]:
    """Metrics missing or stale: keep the size (only a wake-up from zero may happen)."""
    m, current = observation.metrics, observation.replicas
    held = _clamp(current, spec.minimum, spec.maximum)
    reason = f"metrics {why}: holding at {held}"
    if woken and held == 0:
        held = _clamp(math.ceil(m.router_pending / spec.target_queue_per_replica), 1, spec.maximum)
        reason = f"waking from zero to {held}: router demand ({reason})"
    return ScaleDecision(held, current, reason, held=True), next_state


@dataclass(frozen=True)
class _Recommendation:
    replicas: int
    queue: int
    latency: int | None
    explanation: str


def _recommend(
    observation: TierObservation, spec: ScalingSpec, total: float, *, woken: bool
) -> _Recommendation:
    """The larger of the queue and latency recommendations, at most max, with the numbers."""
    m, current = observation.metrics, observation.replicas
    queue = math.ceil(total / spec.target_queue_per_replica)
    latency: int | None = None
    if m.p50_latency_ms is not None and current > 0:
        ratio = m.p50_latency_ms / spec.slo_p50_ms
        if ratio > 1 + spec.latency_tolerance:
            latency = math.ceil(current * ratio)
        elif ratio > 1:
            latency = current
    replicas = min(max(queue, latency or 0), spec.maximum)
    if woken:
        replicas = max(replicas, 1)
    explanation = (
        f"queue {_fmt(total)} ({_fmt(m.queued or 0)} queued + {_fmt(m.executing or 0)} running"
        f" + {_fmt(m.router_pending)} waiting in routers)"
        f" / {_fmt(spec.target_queue_per_replica)} per replica wants {queue}"
    )
    if latency is not None and m.p50_latency_ms is not None:
        explanation += (
            f"; p50 {m.p50_latency_ms:.0f} ms vs SLO {spec.slo_p50_ms:.0f} ms"
            f" (+{spec.latency_tolerance * 100:.0f}%) wants {latency}"
        )
    return _Recommendation(replicas, queue, latency, explanation)


def _scale_down(
    current: int, spec: ScalingSpec, *, stabilized: int, floor: int, idle_for: float, load: str
) -> tuple[int, str]:
    """Down only to the highest recommendation in the window (to zero once idle long enough)."""
    if floor == 0 and stabilized == 0:
        return 0, (
            f"scale to zero {current} -> 0: idle for {idle_for:.0f} s"
            f" (>= {spec.scale_to_zero_idle_seconds:.0f} s)"
        )
    desired = min(_clamp(max(stabilized, floor), spec.minimum, spec.maximum), current)
    window = f"{spec.stabilization_seconds:.0f} s"
    if desired < current:
        return desired, (
            f"scale down {current} -> {desired}: highest recommendation in the last {window}"
            f" is {stabilized}; {load}"
        )
    return current, (
        f"holding at {current}: a recommendation of {stabilized} within the last {window}"
        f" blocks scaling down; {load}"
    )


def decide(
    observation: TierObservation, spec: ScalingSpec, state: ScaleState, now: float
) -> tuple[ScaleDecision, ScaleState]:
    """One tier's decision (the rules are in the module docstring)."""
    m, current = observation.metrics, observation.replicas
    woken = m.router_pending > 0 or _new_demand(m, state)
    demand_total = m.demand_total if m.demand_total is not None else state.demand_total
    in_pods = _pod_load(observation)
    if m.at is None or in_pods is None or now - m.at > STALE_AFTER_SECONDS:
        why = "missing" if m.at is None or in_pods is None else "stale"
        held_state = replace(state, demand_total=demand_total)
        return _hold(observation, spec, held_state, woken=woken, why=why)

    total = in_pods + m.router_pending
    last_busy = now if total > 0 or woken or state.last_busy is None else state.last_busy
    rec = _recommend(observation, spec, total, woken=woken)
    history = tuple((t, r) for t, r in state.history if t > now - spec.stabilization_seconds)
    history += ((now, rec.replicas),)
    stabilized = max(r for _, r in history)

    idle_for = now - last_busy
    if spec.minimum > 0:
        floor = spec.minimum
    elif current == 0 or idle_for >= spec.scale_to_zero_idle_seconds:
        floor = 0
    else:
        floor = 1

    panic_until = state.panic_until if state.panic_until and state.panic_until > now else None
    if current > 0 and rec.replicas >= PANIC_RATIO * current:
        panic_until = now + PANIC_HOLD_SECONDS
    panic = panic_until is not None

    target = _clamp(max(rec.replicas, floor), spec.minimum, spec.maximum)
    if target > current:
        cap = max(math.ceil(current * GROWTH_FACTOR), current + GROWTH_MIN_STEP)
        desired = target if panic else min(target, cap)
        capped = f" (at most {cap} this step)" if desired < target else ""
        verb = "panic scale up" if panic else "scale up"
        reason = f"{verb} {current} -> {desired}: {rec.explanation}{capped}"
    elif target < current and panic:
        desired, reason = current, f"holding at {current} during a burst: {rec.explanation}"
    elif target < current:
        desired, reason = _scale_down(
            current,
            spec,
            stabilized=stabilized,
            floor=floor,
            idle_for=idle_for,
            load=rec.explanation,
        )
    else:
        desired, reason = current, f"steady at {current}: {rec.explanation}"

    decision = ScaleDecision(
        replicas=desired,
        current=current,
        reason=reason,
        queue_recommendation=rec.queue,
        latency_recommendation=rec.latency,
        panic=panic,
        queue_depth=total,
        p50_latency_ms=m.p50_latency_ms,
    )
    return decision, ScaleState(history, last_busy, demand_total, panic_until)


def share_gpu_budget(
    decisions: Mapping[TierName, ScaleDecision],
    specs: Mapping[TierName, ScalingSpec],
    budget: int | None,
) -> dict[TierName, ScaleDecision]:
    """Fit the tiers' decisions into `budget` GPUs: every tier keeps its minimum, then the
    efficient tier gets its wish first (more images per GPU), the flagship what is left; the
    flagship's excess demand is the router's to overflow.

    e.g. budget 8, 1 GPU each: efficient wants 6, flagship 5 -> efficient 6, flagship 2.
    """
    if budget is None:
        return dict(decisions)
    reserved = sum(
        specs[t].minimum * specs[t].gpus_per_replica for t in TIER_NAMES if t in decisions
    )
    left = budget - reserved
    shared: dict[TierName, ScaleDecision] = {}
    for tier in TIER_NAMES:
        if tier not in decisions:
            continue
        decision, spec = decisions[tier], specs[tier]
        extra_wanted = max(0, decision.replicas - spec.minimum)
        if spec.gpus_per_replica == 0:
            extra = extra_wanted
        else:
            extra = min(extra_wanted, max(0, left) // spec.gpus_per_replica)
        left -= extra * spec.gpus_per_replica
        granted = spec.minimum + extra
        if granted >= decision.replicas:
            shared[tier] = decision
            continue
        shared[tier] = replace(
            decision,
            replicas=granted,
            wanted=decision.replicas,
            budget_limited=True,
            reason=(
                f"{decision.reason}; GPU budget {budget} (efficient first):"
                f" {tier} gets {granted} of {decision.replicas} wanted"
            ),
        )
    return shared
