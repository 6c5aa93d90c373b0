"""The autoscaler's readings: PromQL per tier, Prometheus answers, and scraped texts added up."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from duotone_contracts.api.validation import parse_imd
from duotone_operator.adapters.metric_sources import (
    instant_value,
    prometheus_queries,
    tier_metrics_from_scrapes,
    tier_targets,
)
from duotone_operator.policy.autoscaling import ScaleDecision
from duotone_operator.render.status import scale_status
from tests.support.builders import imd

POD = """\
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{{model="duotone",version="1"}} {queued}
# TYPE nv_inference_request_summary_us summary
nv_inference_request_summary_us{{model="duotone",version="1",quantile="0.5"}} {p50_us}
nv_inference_request_summary_us_count{{model="duotone",version="1"}} 10
nv_inference_request_summary_us_sum{{model="duotone",version="1"}} 100
# TYPE duotone_executing_requests gauge
duotone_executing_requests{{model="duotone",tier="efficient"}} {executing}
"""
ROUTER = """\
# TYPE duotone_router_pending_requests gauge
duotone_router_pending_requests{tier="flagship"} 2.0
duotone_router_pending_requests{tier="efficient"} 1.0
# TYPE duotone_router_tier_demand_total counter
duotone_router_tier_demand_total{tier="efficient"} 40.0
duotone_router_tier_demand_total{tier="flagship"} 7.0
"""


def test_targets_and_queries_select_the_tier_and_its_router() -> None:
    manifest = imd("sd").tier("efficient").tier("flagship").build()
    manifest["metadata"]["namespace"] = "images"
    targets = tier_targets(parse_imd(manifest))
    assert set(targets) == {"efficient", "flagship"}
    queries = prometheus_queries(targets["flagship"])
    assert queries["queued"] == (
        'sum(nv_inference_pending_request_count{namespace="images",service="sd-flagship"})'
    )
    assert queries["router_pending"] == (
        'sum(duotone_router_pending_requests{namespace="images",service="sd-router",'
        'tier="flagship"})'
    )
    assert 'quantile="0.5"' in queries["p50_ms"]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(
            {"status": "success", "data": {"result": [{"metric": {}, "value": [1, "3.5"]}]}},
            3.5,
            id="one sample",
        ),
        pytest.param({"status": "success", "data": {"result": []}}, None, id="no series"),
        pytest.param(
            {"status": "success", "data": {"result": [{"metric": {}, "value": [1, "NaN"]}]}},
            None,
            id="NaN is no value",
        ),
    ],
)
def test_prometheus_answers(payload: dict[str, object], expected: float | None) -> None:
    assert instant_value(payload) == expected


def test_a_failed_query_is_an_error_not_a_zero() -> None:
    with pytest.raises(ValueError, match="parse error"):
        instant_value({"status": "error", "error": "parse error"})


def test_scrapes_add_up_across_pods_and_routers() -> None:
    pods = [
        POD.format(queued=3, executing=2, p50_us=200000),
        POD.format(queued=1, executing=4, p50_us=400000),
    ]
    metrics = tier_metrics_from_scrapes(pods, [ROUTER, ROUTER], "efficient", now=50)
    assert (metrics.at, metrics.queued, metrics.executing) == (50, 4, 6)
    assert metrics.p50_latency_ms == pytest.approx(300)
    assert (metrics.router_pending, metrics.demand_total) == (2, 80)


def test_an_unscraped_pod_makes_the_queue_unknown_but_keeps_router_demand() -> None:
    pods = [POD.format(queued=3, executing=2, p50_us=200000), None]
    metrics = tier_metrics_from_scrapes(pods, [ROUTER, None], "flagship", now=50)
    assert metrics.queued is None
    assert metrics.executing is None
    assert (metrics.router_pending, metrics.demand_total) == (2, 7)


def test_no_pods_and_no_router_demand_yet() -> None:
    metrics = tier_metrics_from_scrapes([], [], "efficient", now=50)
    assert metrics.queued is None
    assert metrics.demand_total is None
    assert metrics.router_pending == 0


NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def test_status_records_a_scale_with_its_reason_and_time() -> None:
    decision = ScaleDecision(
        4, 3, "scale up 3 -> 4: queue 14", queue_depth=14.04, p50_latency_ms=310.26
    )
    patch = scale_status({"efficient": decision}, None, NOW)
    assert patch == {
        "tiers": {
            "efficient": {
                "desiredReplicas": 4,
                "gpuBudgetLimited": False,
                "queueDepth": 14.0,
                "p50LatencyMs": 310.3,
                "lastScaleTime": "2026-11-22T12:00:00Z",
                "lastScaleReason": "scale up 3 -> 4: queue 14",
            }
        },
        "p50": "eff 310ms",
    }


def test_status_keeps_figures_on_a_held_decision_and_clears_an_idle_p50() -> None:
    previous = {"tiers": {"efficient": {"p50LatencyMs": 300}, "flagship": {"p50LatencyMs": 5200}}}
    held = ScaleDecision(2, 2, "metrics missing: holding at 2", held=True)
    idle = ScaleDecision(1, 1, "steady at 1", queue_depth=0, p50_latency_ms=None)
    patch = scale_status({"efficient": held, "flagship": idle}, previous, NOW)
    assert "queueDepth" not in patch["tiers"]["efficient"]
    assert "lastScaleReason" not in patch["tiers"]["efficient"]
    assert patch["tiers"]["flagship"]["p50LatencyMs"] is None
    assert patch["p50"] == "eff 300ms"


STEP_POD = (
    POD
    + """\
# TYPE duotone_step_request_p50_microseconds gauge
duotone_step_request_p50_microseconds{{model="duotone",tier="flagship"}} {step_p50_us}
"""
)


def test_a_step_batched_tier_reads_the_runtimes_median() -> None:
    manifest = imd("sd").tier("efficient").tier("flagship").batching(mode="step").build()
    manifest["metadata"]["namespace"] = "images"
    targets = tier_targets(parse_imd(manifest))
    assert not targets["efficient"].step_batched
    assert targets["flagship"].step_batched
    assert prometheus_queries(targets["flagship"])["p50_ms"] == (
        "avg(duotone_step_request_p50_microseconds"
        '{namespace="images",service="sd-flagship"} >= 0) / 1000'
    )
    assert prometheus_queries(targets["efficient"])["p50_ms"] == (
        'avg(nv_inference_request_summary_us{quantile="0.5",namespace="images",'
        'service="sd-efficient"} >= 0) / 1000'
    )
    # Triton's summary of a decoupled model ends at execute (1.2 ms): not the latency.
    pods = [
        STEP_POD.format(queued=0, executing=2, p50_us=1200, step_p50_us=900000),
        STEP_POD.format(queued=0, executing=1, p50_us=1300, step_p50_us="NaN"),
    ]
    metrics = tier_metrics_from_scrapes(pods, [ROUTER], "flagship", now=5, step_batched=True)
    assert metrics.p50_latency_ms == pytest.approx(900)
    assert metrics.executing == 3
