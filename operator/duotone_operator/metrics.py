"""Operator metrics (Prometheus), served on the metrics port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
