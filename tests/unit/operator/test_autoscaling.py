"""The autoscaler's decisions on scripted time: each case is a trace of readings, and the
replicas the tier ends up with after each one (the decision is applied before the next)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duotone_contracts.api.validation import parse_imd
from duotone_operator.policy.autoscaling import (
    CAUSES_BY_DIRECTION,
    PANIC_HOLD_SECONDS,
    STALE_AFTER_SECONDS,
    ScaleDecision,
    ScaleState,
    ScalingSpec,
    TierMetrics,
    TierObservation,
    decide,
    initial_state,
    scaling_spec,
    share_gpu_budget,
)
from tests.support.builders import imd

SPEC = ScalingSpec(
    minimum=1,
    maximum=20,
    target_queue_per_replica=4,
    slo_p50_ms=400,
    latency_tolerance=0.1,
    stabilization_seconds=300,
    scale_to_zero_idle_seconds=600,
)
TO_ZERO = replace(SPEC, minimum=0)


@dataclass(frozen=True)
class Reading:
    """One reading at time `t`: queue in the pods, p50, router pending and demand counter."""

    t: float
    queue: float | None = 0
    p50: float | None = None
    pending: float = 0
    demand: float | None = None
    age: float = 0
    """How old the reading is when decided on (stale readings)."""


def run(
    spec: ScalingSpec, start: int, readings: Sequence[Reading]
) -> tuple[list[int], list[ScaleDecision]]:
    """Feed the readings in order, applying each decision; the replicas after each reading."""
    replicas = start
    state = initial_state(start, readings[0].t)
    sizes, decisions = [], []
    for r in readings:
        metrics = TierMetrics(
            at=None if r.queue is None else r.t - r.age,
            queued=r.queue,
            executing=0 if r.queue is not None else None,
            p50_latency_ms=r.p50,
            router_pending=r.pending,
            demand_total=r.demand,
        )
        decision, state = decide(TierObservation(replicas, replicas, metrics), spec, state, r.t)
        replicas = decision.replicas
        sizes.append(replicas)
        decisions.append(decision)
    return sizes, decisions


def every(seconds: float, until: float, start: float = 0, **fields: float | None) -> list[Reading]:
    """Readings every `seconds` from `start` up to and including `until`."""
    count = int((until - start) / seconds) + 1
    return [Reading(start + i * seconds, **fields) for i in range(count)]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "start", "readings", "expected"),
    [
        pytest.param(
            SPEC,
            2,
            [Reading(0, queue=8), Reading(2, queue=60)],
            [2, 15],
            id="burst: queue 60 at 4 per replica goes to 15 at once (panic lifts the step cap)",
        ),
        pytest.param(
            SPEC,
            4,
            [Reading(0, queue=16), Reading(2, queue=40), Reading(4, queue=40)],
            [4, 8, 10],
            id="growth below the panic ratio is capped at x2 per step",
        ),
        pytest.param(
            SPEC,
            3,
            [Reading(0, queue=14)],
            [4],
            id="queue 14 over 4 per replica at 3 replicas asks for 4",
        ),
        pytest.param(
            SPEC,
            2,
            every(2, 600, queue=8, p50=380),
            [2] * 301,
            id="steady load at capacity: no change in 10 minutes",
        ),
        pytest.param(
            SPEC,
            5,
            [
                Reading(0, queue=20),
                Reading(100, queue=4),
                Reading(299, queue=4),
                Reading(301, queue=4),
            ],
            [5, 5, 5, 1],
            id="scale-down blocked inside stabilization window, then down to its highest",
        ),
        pytest.param(
            SPEC,
            10,
            [Reading(t, queue=max(0, 40 - t / 15)) for t in range(0, 1201, 60)],
            [10, 10, 10, 10, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1],
            id="slow decay follows the queue one window late",
        ),
        pytest.param(
            replace(SPEC, stabilization_seconds=0),
            2,
            [
                Reading(0, queue=30),
                Reading(10, queue=0),
                Reading(59, queue=0),
                Reading(71, queue=0),
            ],
            [8, 8, 8, 1],
            id="panic forbids scaling down for its hold time even without a window",
        ),
        pytest.param(
            TO_ZERO,
            1,
            [Reading(0, queue=2), *every(60, 600, start=60, queue=0), Reading(661, queue=0)],
            [1] * 10 + [0, 0],
            id="scale to zero only after 600 s idle with min 0",
        ),
        pytest.param(
            SPEC,
            1,
            every(60, 1200, queue=0),
            [1] * 21,
            id="min 1 never goes to zero however idle",
        ),
        pytest.param(
            TO_ZERO,
            0,
            [Reading(0), Reading(5, pending=3), Reading(7, pending=9)],
            [0, 1, 3],
            id="wake from zero on requests waiting in the router",
        ),
        pytest.param(
            TO_ZERO,
            0,
            [Reading(0, demand=10), Reading(5, demand=10), Reading(7, demand=12)],
            [0, 0, 1],
            id="wake from zero on new router demand (served elsewhere by overflow)",
        ),
        pytest.param(
            SPEC,
            6,
            [Reading(0, queue=24), Reading(400, queue=None), Reading(800, queue=None)],
            [6, 6, 6],
            id="missing metrics hold the size and never scale down",
        ),
        pytest.param(
            SPEC,
            6,
            [Reading(0, queue=24), Reading(400, queue=0, age=STALE_AFTER_SECONDS + 1)],
            [6, 6],
            id="stale metrics hold the size",
        ),
        pytest.param(
            TO_ZERO,
            0,
            [Reading(0, queue=None), Reading(2, queue=None, pending=5)],
            [0, 2],
            id="missing tier metrics still wake a tier at zero",
        ),
        pytest.param(
            SPEC,
            2,
            [Reading(0, queue=1, p50=900)],
            [5],
            id="p50 over SLO with short queue scales in proportion (2 x 900/400 -> 5)",
        ),
        pytest.param(
            SPEC,
            3,
            [Reading(0, queue=0, p50=430), Reading(400, queue=0, p50=430)],
            [3, 3],
            id="p50 inside the tolerance band holds even with an empty queue",
        ),
        pytest.param(
            SPEC,
            3,
            [Reading(0, queue=0, p50=200), Reading(301, queue=0, p50=200)],
            [3, 1],
            id="p50 under SLO leaves the queue to decide",
        ),
        pytest.param(
            replace(SPEC, maximum=6),
            2,
            [Reading(0, queue=1000)],
            [6],
            id="clamped to max",
        ),
        pytest.param(
            replace(SPEC, minimum=3),
            5,
            [Reading(0, queue=0), Reading(301, queue=0)],
            [5, 3],
            id="clamped to min",
        ),
    ],
)
def test_trace(spec: ScalingSpec, start: int, readings: list[Reading], expected: list[int]) -> None:
    sizes, decisions = run(spec, start, readings)
    assert sizes == expected, [d.reason for d in decisions]


def test_reasons_carry_the_numbers() -> None:
    _, decisions = run(SPEC, 3, [Reading(0, queue=14)])
    assert decisions[0].reason == (
        "scale up 3 -> 4: queue 14 (14 queued + 0 running + 0 waiting in routers)"
        " / 4 per replica wants 4"
    )
    _, decisions = run(SPEC, 2, [Reading(0, queue=1, p50=900)])
    assert "p50 900 ms vs SLO 400 ms (+10%) wants 5" in decisions[0].reason
    _, decisions = run(SPEC, 5, [Reading(0, queue=20), Reading(100, queue=4)])
    assert decisions[1].reason.startswith(
        "holding at 5: a recommendation of 5 within the last 300 s"
    )
    _, decisions = run(TO_ZERO, 1, [Reading(0, queue=0), Reading(700, queue=0)])
    assert decisions[1].reason == "scale to zero 1 -> 0: idle for 700 s (>= 600 s)"
    _, decisions = run(SPEC, 6, [Reading(0, queue=None)])
    assert decisions[0].reason == "metrics missing: holding at 6"
    assert decisions[0].held


def test_a_restarted_operator_waits_a_full_window_before_scaling_down() -> None:
    state = initial_state(8, now=1000)
    quiet = TierObservation(8, 8, TierMetrics(at=1100, queued=0, executing=0))
    decision, _ = decide(quiet, SPEC, state, now=1100)
    assert decision.replicas == 8
    decision, _ = decide(
        replace(quiet, metrics=TierMetrics(at=1301, queued=0, executing=0)), SPEC, state, now=1301
    )
    assert decision.replicas == 1


def test_panic_state_expires() -> None:
    _, decisions = run(replace(SPEC, stabilization_seconds=0), 2, [Reading(0, queue=30)])
    assert decisions[0].panic
    _, later = run(
        replace(SPEC, stabilization_seconds=0),
        2,
        [Reading(0, queue=30), Reading(PANIC_HOLD_SECONDS + 1, queue=0)],
    )
    assert not later[1].panic


def _wants(replicas: int) -> ScaleDecision:
    return ScaleDecision(replicas=replicas, current=1, reason="queue")


@pytest.mark.parametrize(
    ("budget", "efficient", "flagship", "expected", "limited"),
    [
        pytest.param(None, 6, 5, (6, 5), (False, False), id="no budget: both get what they want"),
        pytest.param(16, 6, 5, (6, 5), (False, False), id="budget large enough: no contention"),
        pytest.param(
            8, 6, 5, (6, 2), (False, True), id="contention: efficient first, flagship gets the rest"
        ),
        pytest.param(
            8,
            9,
            3,
            (7, 1),
            (True, True),
            id="flagship keeps its minimum even when efficient wants all",
        ),
    ],
)
def test_gpu_budget(
    budget: int | None,
    efficient: int,
    flagship: int,
    expected: tuple[int, int],
    limited: tuple[bool, bool],
) -> None:
    specs = {"efficient": replace(SPEC, minimum=1), "flagship": replace(SPEC, minimum=1)}
    shared = share_gpu_budget(
        {"efficient": _wants(efficient), "flagship": _wants(flagship)},
        specs,
        budget,  # type: ignore[dict-item]
    )
    assert (shared["efficient"].replicas, shared["flagship"].replicas) == expected
    assert (shared["efficient"].budget_limited, shared["flagship"].budget_limited) == limited
    if limited[1]:
        assert shared["flagship"].wanted == flagship
        assert (
            f"GPU budget {budget} (efficient first): flagship gets {expected[1]} of"
            f" {flagship} wanted" in shared["flagship"].reason
        )


def test_gpu_budget_counts_gpus_per_replica() -> None:
    specs = {
        "efficient": replace(SPEC, minimum=1, gpus_per_replica=1),
        "flagship": replace(SPEC, minimum=0, gpus_per_replica=2),
    }
    shared = share_gpu_budget({"efficient": _wants(4), "flagship": _wants(3)}, specs, 9)  # type: ignore[dict-item]
    assert shared["efficient"].replicas == 4
    assert shared["flagship"].replicas == 2  # 5 GPUs left, 2 per replica


def test_scaling_spec_from_the_imd() -> None:
    manifest = imd("sd").tier("efficient", min=0, max=12).tier("flagship", min=1, max=3).build()
    manifest["spec"]["autoscaling"] = {
        "targetQueueDepthPerReplica": 2,
        "latencyTolerancePercent": 25,
        "scaleDownStabilizationSeconds": 120,
        "scaleToZeroIdleSeconds": 900,
    }
    spec = scaling_spec(parse_imd(manifest), "efficient")
    assert (spec.minimum, spec.maximum, spec.target_queue_per_replica) == (0, 12, 2)
    assert (spec.latency_tolerance, spec.stabilization_seconds) == (0.25, 120)
    assert spec.scale_to_zero_idle_seconds == 900
    assert spec.slo_p50_ms == 400
    assert scaling_spec(parse_imd(manifest), "flagship").slo_p50_ms == 6000


# --------------------------------------------------------------------------- properties

readings = st.builds(
    TierMetrics,
    at=st.one_of(st.none(), st.floats(0, 100)),
    queued=st.one_of(st.none(), st.floats(0, 10000)),
    executing=st.one_of(st.none(), st.floats(0, 100)),
    p50_latency_ms=st.one_of(st.none(), st.floats(0, 100000)),
    router_pending=st.floats(0, 1000),
    demand_total=st.one_of(st.none(), st.floats(0, 1e6)),
)


@st.composite
def specs(draw: st.DrawFn) -> ScalingSpec:
    minimum = draw(st.integers(0, 20))
    return ScalingSpec(
        minimum=minimum,
        maximum=draw(st.integers(max(minimum, 1), 40)),
        target_queue_per_replica=draw(st.floats(0.1, 100)),
        slo_p50_ms=draw(st.floats(1, 60000)),
        latency_tolerance=draw(st.floats(0, 1)),
        stabilization_seconds=draw(st.floats(0, 600)),
        scale_to_zero_idle_seconds=draw(st.floats(0, 1200)),
    )


@st.composite
def traces(draw: st.DrawFn) -> tuple[ScalingSpec, int, list[tuple[float, TierMetrics]]]:
    spec = draw(specs())
    start = draw(st.integers(spec.minimum, spec.maximum))
    steps = draw(st.lists(st.tuples(st.floats(0.5, 120), readings), min_size=1, max_size=30))
    t, trace = 100.0, []
    for gap, metrics in steps:
        t += gap
        at = None if metrics.at is None else t - metrics.at / 2
        trace.append((t, replace(metrics, at=at)))
    return spec, start, trace


@given(traces())
def test_replicas_always_within_bounds(
    trace: tuple[ScalingSpec, int, list[tuple[float, TierMetrics]]],
) -> None:
    spec, replicas, steps = trace
    state = initial_state(replicas, steps[0][0])
    for now, metrics in steps:
        decision, state = decide(TierObservation(replicas, replicas, metrics), spec, state, now)
        assert spec.minimum <= decision.replicas <= spec.maximum
        replicas = decision.replicas


@given(traces())
def test_never_scales_down_below_a_recommendation_inside_the_window(
    trace: tuple[ScalingSpec, int, list[tuple[float, TierMetrics]]],
) -> None:
    spec, replicas, steps = trace
    state = initial_state(replicas, steps[0][0])
    for now, metrics in steps:
        before = state
        decision, state = decide(TierObservation(replicas, replicas, metrics), spec, state, now)
        if decision.replicas < replicas:
            assert not decision.held, "scaled down on missing or stale metrics"
            inside = [r for t, r in before.history if t > now - spec.stabilization_seconds]
            assert all(r <= decision.replicas for r in inside), (inside, decision.reason)
        replicas = decision.replicas


@given(
    specs(),
    st.integers(0, 40),
    st.floats(0, 1000),
    st.floats(0, 1000),
    st.one_of(st.none(), st.floats(1, 60000)),
)
def test_monotone_in_queue_depth(
    spec: ScalingSpec, current: int, low: float, extra: float, p50: float | None
) -> None:
    current = max(spec.minimum, min(spec.maximum, current))
    state = initial_state(current, 0)

    def replicas(queue: float) -> int:
        metrics = TierMetrics(at=10, queued=queue, executing=0, p50_latency_ms=p50)
        decision, _ = decide(TierObservation(current, current, metrics), spec, state, 10)
        return decision.replicas

    assert replicas(low) <= replicas(low + extra)


def test_state_is_a_value() -> None:
    state = ScaleState()
    metrics = TierMetrics(at=0, queued=8, executing=0)
    decide(TierObservation(1, 1, metrics), SPEC, state, 0)
    assert state == ScaleState()


@pytest.mark.parametrize(
    ("decision", "cause"),
    [
        pytest.param(ScaleDecision(1, 0, "r", queue_recommendation=1), "wake", id="up from zero"),
        pytest.param(
            ScaleDecision(3, 1, "r", queue_recommendation=3, latency_recommendation=2),
            "queue",
            id="up, queue recommendation larger",
        ),
        pytest.param(
            ScaleDecision(3, 2, "r", queue_recommendation=3, latency_recommendation=3),
            "queue",
            id="up, a tie counts as queue",
        ),
        pytest.param(
            ScaleDecision(4, 2, "r", queue_recommendation=1, latency_recommendation=4),
            "latency",
            id="up, latency recommendation larger",
        ),
        pytest.param(
            ScaleDecision(3, 1, "r", queue_recommendation=1, latency_recommendation=0),
            "bounds",
            id="up to a raised min",
        ),
        pytest.param(
            ScaleDecision(2, 4, "r", queue_recommendation=6, budget_limited=True),
            "budget",
            id="down, GPU budget",
        ),
        pytest.param(ScaleDecision(0, 1, "r", queue_recommendation=0), "idle", id="down to zero"),
        pytest.param(
            ScaleDecision(2, 4, "r", queue_recommendation=6), "bounds", id="down to a lowered max"
        ),
        pytest.param(
            ScaleDecision(2, 4, "r", queue_recommendation=2), "demand", id="down after the window"
        ),
        pytest.param(ScaleDecision(2, 2, "r", queue_recommendation=2), "none", id="no change"),
    ],
)
def test_each_scale_has_one_word_cause_for_dashboards(decision: ScaleDecision, cause: str) -> None:
    assert decision.cause == cause
    if cause != "none":
        assert cause in CAUSES_BY_DIRECTION[decision.direction]
