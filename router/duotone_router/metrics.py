"""The router's Prometheus metrics (one registry per router, so tests can run several).

Names, help texts and label keys come from `duotone_contracts.metrics`, which the autoscaler,
the dashboard and the alert rules read too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from duotone_contracts import metrics as m
from duotone_contracts.routing_table import RoutingTable

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3, 6, 10, 20, 40, 80, 160)
"""Seconds: from an efficient 64x64 image on CPU to a flagship 1024x1024 one under load."""


@dataclass
class RouterMetrics:
    """Everything the router exports; label `tier` is "none" for requests never routed."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _slo_tiers: set[str] = field(default_factory=set)

    def _counter(self, metric: m.Metric) -> Counter:
        return Counter(metric.name, metric.help, metric.labels, registry=self.registry)

    def _gauge(self, metric: m.Metric) -> Gauge:
        return Gauge(metric.name, metric.help, metric.labels, registry=self.registry)

    def __post_init__(self) -> None:
        self.requests = self._counter(m.ROUTER_REQUESTS)
        self.routes = self._counter(m.ROUTER_ROUTES)
        self.overflows = self._counter(m.ROUTER_OVERFLOWS)
        self.demand = self._counter(m.ROUTER_TIER_DEMAND)
        self.latency = Histogram(
            m.ROUTER_REQUEST_DURATION.name,
            m.ROUTER_REQUEST_DURATION.help,
            m.ROUTER_REQUEST_DURATION.labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = self._gauge(m.ROUTER_IN_FLIGHT)
        self.pending = self._gauge(m.ROUTER_PENDING)
        self.outstanding = self._gauge(m.ROUTER_OUTSTANDING)
        self.backends = self._gauge(m.ROUTER_BACKENDS)
        self.pending_refusals = self._counter(m.ROUTER_PENDING_REFUSALS)
        self.retries = self._counter(m.ROUTER_RETRIES)
        self.ejections = self._counter(m.ROUTER_EJECTIONS)
        self.ejected = self._gauge(m.ROUTER_EJECTED)
        self.backend_errors = self._counter(m.ROUTER_BACKEND_ERRORS)
        self.cancelled = self._counter(m.ROUTER_CANCELLED)
        self.config_reloads = self._counter(m.ROUTER_CONFIG_RELOADS)
        self.usage_tokens = self._counter(m.ROUTER_USAGE_TOKENS)
        self.moderation_blocked = self._counter(m.ROUTER_MODERATION_BLOCKED)
        self.efficient_percent = self._gauge(m.ROUTER_EFFICIENT_PERCENT)
        self.slo_p50 = self._gauge(m.ROUTER_TIER_SLO_P50)

    def show_config(self, table: RoutingTable) -> None:
        """Export the routing table's settings. Each tier's pending gauge, latency histogram and
        overflow counters start at 0: a series born at its first value shows no rate() until
        it changes again, so a tier's first burst would never reach its p50 or the SLO rules."""
        self.efficient_percent.set(table.traffic.efficient_percent)
        for gone in self._slo_tiers - set(table.tiers):
            self.slo_p50.remove(gone)
        self._slo_tiers = set(table.tiers)
        for name, route in table.tiers.items():
            self.slo_p50.labels(name).set(route.slo.p50_latency_ms / 1000)
            self.pending.labels(name)
            self.ejected.labels(name)
            self.latency.labels(name)
            for other in table.tiers:
                if other != name:
                    self.overflows.labels(name, other)
