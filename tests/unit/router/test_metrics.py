"""The router's metrics start every per-tier series at 0 when a routing table is applied."""

from __future__ import annotations

from duotone_contracts.api import parse_imd
from duotone_contracts.metrics import catalogue
from duotone_contracts.routing_table import RoutingTable, parse_routing_table
from duotone_operator.render.router import routing_table
from duotone_router.metrics import RouterMetrics
from tests.support.builders import imd


def _config(slo_ms: int) -> RoutingTable:
    manifest = imd("sd").tier("efficient").slo(p50_ms=slo_ms).tier("flagship").build()
    return parse_routing_table(routing_table(parse_imd(manifest)).to_json())


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


def test_the_router_exports_exactly_the_contracts_router_families() -> None:
    metrics = RouterMetrics()
    metrics.show_config(_config(400))
    exported = {family.name for family in metrics.registry.collect()}
    declared = {
        metric.name.removesuffix("_total")  # prometheus_client's family name of a counter
        for metric in catalogue()
        if metric.name.startswith("duotone_router_")
    }
    assert exported == declared
