"""Operator metrics (Prometheus), served on the metrics port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from duotone_operator.policy.autoscaling import CAUSES_BY_DIRECTION

RECONCILES = Counter(
    "duotone_operator_reconciles",
    "Reconciles of ImageModelDeployments by result (success, problem, error).",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "duotone_operator_reconcile_duration_seconds",
    "Time to reconcile one ImageModelDeployment.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LAST_SUCCESS = Gauge(
    "duotone_operator_last_successful_reconcile_timestamp_seconds",
    "Unix time of the last successful reconcile.",
)
CHILDREN_APPLIED = Counter(
    "duotone_operator_children_applied", "Child objects applied by server-side apply.", ["kind"]
)
CHILDREN_DELETED = Counter(
    "duotone_operator_children_deleted", "Child objects deleted (removed tiers).", ["kind"]
)
WATCH_STALE = Gauge(
    "duotone_operator_watch_stale_objects",
    "IMDs whose latest version the watch has not delivered within the grace period.",
)

# The autoscaler, per tier of each IMD (labels namespace, imd, tier).
_TIER = ["namespace", "imd", "tier"]
SCALE_DECISIONS = Counter(
    "duotone_autoscaler_decisions",
    "Autoscaler decisions by direction (up, down, none) and whether metrics were held.",
    [*_TIER, "direction", "held"],
)
SCALE_PATCHES = Counter(
    "duotone_autoscaler_scale_patches",
    "Replica changes written through /scale, by direction and cause (the dashboard's annotations).",
    [*_TIER, "direction", "cause"],
)
SCALE_ERRORS = Counter(
    "duotone_autoscaler_errors", "Autoscaler ticks that failed to read or to act.", ["namespace"]
)


def start_scale_counters(namespace: str, imd: str, tier: str) -> None:
    """Create a tier's scale counters at 0, so the first scale is an increase (a counter born
    at 1 shows no increase() and the dashboard's scale annotation would miss it)."""
    for direction, causes in CAUSES_BY_DIRECTION.items():
        for cause in causes:
            SCALE_PATCHES.labels(namespace, imd, tier, direction, cause)


REPLICAS_CURRENT = Gauge(
    "duotone_autoscaler_current_replicas", "The tier Deployment's spec.replicas.", _TIER
)
REPLICAS_DESIRED = Gauge(
    "duotone_autoscaler_desired_replicas", "Replicas the autoscaler decided on.", _TIER
)
REPLICAS_WANTED = Gauge(
    "duotone_autoscaler_wanted_replicas",
    "Replicas the tier's load asks for before max and the GPU budget.",
    _TIER,
)
REPLICAS_MAX = Gauge("duotone_autoscaler_max_replicas", "The tier's replicas.max.", _TIER)
QUEUE_DEPTH = Gauge(
    "duotone_autoscaler_queue_depth", "Queued, running and router-pending requests.", _TIER
)
P50_MS = Gauge("duotone_autoscaler_p50_latency_ms", "Observed p50 latency of the tier.", _TIER)
SLO_P50_MS = Gauge("duotone_autoscaler_slo_p50_latency_ms", "The tier's p50 objective.", _TIER)
BUDGET_LIMITED = Gauge(
    "duotone_autoscaler_gpu_budget_limited", "1 while the GPU budget holds the tier back.", _TIER
)
LAST_DECISION = Gauge(
    "duotone_autoscaler_last_decision_timestamp_seconds",
    "Unix time of the tier's latest decision.",
    _TIER,
)
TICK_SECONDS = Histogram(
    "duotone_autoscaler_tick_duration_seconds",
    "Time to read metrics, decide and act for one IMD.",
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
