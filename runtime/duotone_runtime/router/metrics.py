"""The router's Prometheus metrics (one registry per router, so tests can run several)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from duotone_runtime.router.config import RouterConfig

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3, 6, 10, 20, 40, 80, 160)
"""Seconds: from an efficient 64x64 image on CPU to a flagship 1024x1024 one under load."""


@dataclass
class RouterMetrics:
    """Everything the router exports; label `tier` is "none" for requests never routed."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _slo_tiers: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "duotone_router_requests",
            "Requests answered, by serving tier, HTTP status and API key name.",
            ["tier", "status", "key"],
            registry=r,
        )
        self.routes = Counter(
            "duotone_router_routes",
            "Routing decisions: route is requested, split or overflow; tier serves it.",
            ["tier", "route"],
            registry=r,
        )
        self.overflows = Counter(
            "duotone_router_overflows",
            "Requests a saturated tier passed to another (from -> to).",
            ["from_tier", "to_tier"],
            registry=r,
        )
        self.demand = Counter(
            "duotone_router_tier_demand",
            "Requests that wanted each tier before overflow (wakes a tier scaled to zero).",
            ["tier"],
            registry=r,
        )
        self.latency = Histogram(
            "duotone_router_request_duration_seconds",
            "Time from request received to response ready, by serving tier.",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "duotone_router_in_flight_requests", "Requests being handled now.", registry=r
        )
        self.pending = Gauge(
            "duotone_router_pending_requests",
            "Requests waiting for a ready pod of the tier (e.g. scaled to zero).",
            ["tier"],
            registry=r,
        )
        self.outstanding = Gauge(
            "duotone_router_backend_outstanding_requests",
            "Requests sent to the tier's pods and not yet answered.",
            ["tier"],
            registry=r,
        )
        self.backends = Gauge(
            "duotone_router_backends", "Ready pods known for the tier.", ["tier"], registry=r
        )
        self.retries = Counter(
            "duotone_router_backend_retries",
            "Requests retried on another pod after a failed connection.",
            ["tier"],
            registry=r,
        )
        self.backend_errors = Counter(
            "duotone_router_backend_errors",
            "Failed backend calls by tier and kind (connect, queue_full, timeout, ...).",
            ["tier", "failure"],
            registry=r,
        )
        self.cancelled = Counter(
            "duotone_router_cancelled_requests",
            "Requests whose client went away; the upstream call was cancelled.",
            ["tier"],
            registry=r,
        )
        self.config_reloads = Counter(
            "duotone_router_config_reloads",
            "Routing table reloads by result (ok or invalid).",
            ["result"],
            registry=r,
        )
        self.efficient_percent = Gauge(
            "duotone_router_efficient_percent",
            "Configured share of unnamed requests sent to the efficient tier.",
            registry=r,
        )
        self.slo_p50 = Gauge(
            "duotone_router_tier_slo_p50_latency_seconds",
            "The tier's p50 latency objective (spec slo.p50LatencyMs), the dashboards' SLO line.",
            ["tier"],
            registry=r,
        )

    def show_config(self, config: RouterConfig) -> None:
        """Export the routing table's settings. Each tier's pending gauge, latency histogram and
        overflow counters start at 0: a series born at its first value shows no rate() until
        it changes again, so a tier's first burst would never reach its p50 or the SLO rules."""
        self.efficient_percent.set(config.traffic.efficient_percent)
        for gone in self._slo_tiers - set(config.tiers):
            self.slo_p50.remove(gone)
        self._slo_tiers = set(config.tiers)
        for name, route in config.tiers.items():
            self.slo_p50.labels(name).set(route.slo.p50_latency_ms / 1000)
            self.pending.labels(name)
            self.latency.labels(name)
            for other in config.tiers:
                if other != name:
                    self.overflows.labels(name, other)
