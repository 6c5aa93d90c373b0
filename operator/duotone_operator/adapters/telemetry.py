"""The operator's own Prometheus metrics, served on its metrics port.

Names, help texts and label keys come from `duotone_contracts.metrics`, which the dashboard,
the alert rules and the docs read too.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from duotone_contracts import metrics as m
from duotone_operator.policy.autoscaling import CAUSES_BY_DIRECTION

RECONCILES = Counter(m.RECONCILES.name, m.RECONCILES.help, m.RECONCILES.labels)
RECONCILE_SECONDS = Histogram(
    m.RECONCILE_DURATION.name,
    m.RECONCILE_DURATION.help,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LAST_SUCCESS = Gauge(m.LAST_SUCCESSFUL_RECONCILE.name, m.LAST_SUCCESSFUL_RECONCILE.help)
CHILDREN_APPLIED = Counter(
    m.CHILDREN_APPLIED.name, m.CHILDREN_APPLIED.help, m.CHILDREN_APPLIED.labels
)
CHILDREN_DELETED = Counter(
    m.CHILDREN_DELETED.name, m.CHILDREN_DELETED.help, m.CHILDREN_DELETED.labels
)
WATCH_STALE = Gauge(m.WATCH_STALE.name, m.WATCH_STALE.help)
REPAIRS = Counter(m.REPAIRS.name, m.REPAIRS.help)
LEADER = Gauge(m.LEADER.name, m.LEADER.help)
API_REQUESTS = Counter(m.API_REQUESTS.name, m.API_REQUESTS.help, m.API_REQUESTS.labels)

# The autoscaler, per tier of each IMD (labels namespace, imd, tier).
SCALE_DECISIONS = Counter(m.SCALE_DECISIONS.name, m.SCALE_DECISIONS.help, m.SCALE_DECISIONS.labels)
SCALE_PATCHES = Counter(m.SCALE_PATCHES.name, m.SCALE_PATCHES.help, m.SCALE_PATCHES.labels)
SCALE_ERRORS = Counter(m.SCALE_ERRORS.name, m.SCALE_ERRORS.help, m.SCALE_ERRORS.labels)


def start_scale_counters(namespace: str, imd: str, tier: str) -> None:
    """Create a tier's scale counters at 0, so the first scale is an increase (a counter born
    at 1 shows no increase() and the dashboard's scale annotation would miss it)."""
    for direction, causes in CAUSES_BY_DIRECTION.items():
        for cause in causes:
            SCALE_PATCHES.labels(namespace, imd, tier, direction, cause)


def _tier_gauge(metric: m.Metric) -> Gauge:
    return Gauge(metric.name, metric.help, metric.labels)


REPLICAS_CURRENT = _tier_gauge(m.REPLICAS_CURRENT)
REPLICAS_DESIRED = _tier_gauge(m.REPLICAS_DESIRED)
REPLICAS_WANTED = _tier_gauge(m.REPLICAS_WANTED)
REPLICAS_MAX = _tier_gauge(m.REPLICAS_MAX)
QUEUE_DEPTH = _tier_gauge(m.QUEUE_DEPTH)
P50_MS = _tier_gauge(m.P50_LATENCY_MS)
SLO_P50_MS = _tier_gauge(m.SLO_P50_LATENCY_MS)
BUDGET_LIMITED = _tier_gauge(m.GPU_BUDGET_LIMITED)
LAST_DECISION = _tier_gauge(m.LAST_DECISION)
TICK_SECONDS = Histogram(
    m.TICK_DURATION.name,
    m.TICK_DURATION.help,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TIER_GAUGES = (
    REPLICAS_CURRENT,
    REPLICAS_DESIRED,
    REPLICAS_WANTED,
    REPLICAS_MAX,
    QUEUE_DEPTH,
    P50_MS,
    SLO_P50_MS,
    BUDGET_LIMITED,
    LAST_DECISION,
)
