"""The router's metrics start every per-tier series at 0 when a routing table is applied."""

from __future__ import annotations

import json

from duotone_operator.api import parse_imd
from duotone_operator.render.router import routing_table
from duotone_runtime.router.config import RouterConfig, parse_router_config
from duotone_runtime.router.metrics import RouterMetrics
from tests.support.builders import imd


def _config(slo_ms: int) -> RouterConfig:
    manifest = imd("sd").tier("efficient").slo(p50_ms=slo_ms).tier("flagship").build()
    return parse_router_config(json.dumps(routing_table(parse_imd(manifest))))


def test_a_routing_table_starts_each_tiers_series_at_zero() -> None:
    """A series born at its first value shows no rate(): a tier's first burst would never
    reach its p50 (the dashboards and the latency SLO rules)."""
    metrics = RouterMetrics()
    metrics.show_config(_config(400))
    value = metrics.registry.get_sample_value
    for tier in ("efficient", "flagship"):
        assert value("duotone_router_request_duration_seconds_count", {"tier": tier}) == 0
        assert value("duotone_router_pending_requests", {"tier": tier}) == 0
    assert (
        value("duotone_router_overflows_total", {"from_tier": "flagship", "to_tier": "efficient"})
        == 0
    )
    assert value("duotone_router_tier_slo_p50_latency_seconds", {"tier": "efficient"}) == 0.4
