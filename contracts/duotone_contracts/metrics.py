"""Metric names and label keys: what one program exports and another queries (pure).

The runtime (Triton's own metrics and the model's), the router and the operator export these
families; the autoscaler's queries and scrapes, the Grafana dashboard and the Prometheus rules
read them. Every name is the one a query writes: counters end in `_total` (prometheus_client
strips the suffix when a counter is declared and adds it back on the wire; Triton exports the
name as given), histograms add `_bucket`, `_sum` and `_count`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# ---------------------------------------------------------------- label keys

TIER: Final = "tier"
"""The serving tier: efficient or flagship (the router's "none" for a request never routed)."""
IMD: Final = "imd"
"""The IMD's name; scrape configs copy it from the Service label app.kubernetes.io/instance."""
NAMESPACE: Final = "namespace"
"""The IMD's namespace (a scrape target label; the operator's own metrics carry it too)."""
SERVICE: Final = "service"
"""The Service a series was scraped through (a scrape target label)."""
MODEL: Final = "model"
QUANTILE: Final = "quantile"
STATUS: Final = "status"
KEY: Final = "key"
ROUTE: Final = "route"
FROM_TIER: Final = "from_tier"
TO_TIER: Final = "to_tier"
FAILURE: Final = "failure"
RESULT: Final = "result"
KIND: Final = "kind"
DIRECTION: Final = "direction"
CAUSE: Final = "cause"
HELD: Final = "held"
STAGE: Final = "stage"
REASON: Final = "reason"
VERB: Final = "verb"

_PER_TIER = (NAMESPACE, IMD, TIER)
"""The autoscaler's per-tier series."""


@dataclass(frozen=True)
class Metric:
    """One metric family: the name a query writes, its help text and its label keys."""

    name: str
    help: str
    labels: tuple[str, ...] = ()

    @property
    def bucket(self) -> str:
        """A histogram's bucket series."""
        return f"{self.name}_bucket"

    @property
    def count(self) -> str:
        """A histogram's (or summary's) observation count."""
        return f"{self.name}_count"

    @property
    def sum(self) -> str:
        """A histogram's (or summary's) sum of observations."""
        return f"{self.name}_sum"


# ---------------------------------------------------------------- Triton's own (tier pods)

TRITON_PENDING_REQUESTS: Final = Metric(
    "nv_inference_pending_request_count", "Requests waiting in Triton's queue.", (MODEL,)
)
TRITON_REQUEST_SUMMARY_US: Final = Metric(
    "nv_inference_request_summary_us",
    "Request latency quantiles in microseconds (--metrics-config summary_latencies=true).",
    (MODEL, QUANTILE),
)

# ---------------------------------------------------------------- the runtime's model (tier pods)

IMAGES_GENERATED: Final = Metric("duotone_images_generated_total", "Images generated.")
DENOISING_STEPS: Final = Metric(
    "duotone_denoising_steps_total", "Denoising steps computed (images x steps)."
)
DENOISING_STEPS_PER_SECOND: Final = Metric(
    "duotone_denoising_steps_per_second",
    "Denoising steps per second (images x steps / denoising time) of the last call.",
)
STAGE_SECONDS: Final = Metric(
    "duotone_stage_seconds_total",
    "Time spent per stage: text_encoding, denoising, vae_decode, png_encode.",
    (STAGE,),
)
STAGE_DURATION: Final = Metric(
    "duotone_stage_duration_seconds", "Duration of each stage per pipeline call.", (STAGE,)
)
PIPELINE_BATCH_IMAGES: Final = Metric(
    "duotone_pipeline_batch_images", "Images per pipeline call (batch size)."
)
EXECUTE_BATCH_REQUESTS: Final = Metric(
    "duotone_execute_batch_requests", "Requests per Triton execute call."
)
EXECUTING_REQUESTS: Final = Metric(
    "duotone_executing_requests",
    "Requests in execute now (queued ones are nv_inference_pending_request_count); in a "
    "step-batched tier, every request the step loop holds, queued or running.",
)
ALLOCATED_GPUS: Final = Metric(
    "duotone_allocated_gpus",
    "GPUs the tier spec gives this pod (resources.gpus); the cost panels divide by it.",
)
REQUESTS_REJECTED: Final = Metric(
    "duotone_requests_rejected_total",
    "Requests answered with an error, by reason (invalid, failed, cancelled; step-batched "
    "tiers also deadline, infeasible, queue_full).",
    (REASON,),
)
REJECTION_REASONS: Final = (
    "invalid",
    "failed",
    "cancelled",
    "deadline",
    "infeasible",
    "queue_full",
)
"""REQUESTS_REJECTED's reasons: deadline is a deadline missed while queued or running (dropped
at the next step), infeasible a request refused before any step because it could not finish in
time."""
STEP_BATCH_IMAGES: Final = Metric(
    "duotone_step_batch_images", "Step-batched tiers: images in the running batch, per step."
)
STEP_DURATION: Final = Metric(
    "duotone_step_duration_seconds",
    "Step-batched tiers: time of one denoising step of the running batch.",
)
STEP_QUEUE_WAIT: Final = Metric(
    "duotone_step_queue_wait_seconds",
    "Step-batched tiers: time from a request's arrival until it joined the running batch.",
)
STEP_REQUEST_P50_US: Final = Metric(
    "duotone_step_request_p50_microseconds",
    "Step-batched tiers: median latency (arrival at the pod to answer) of the requests answered "
    "in the last minute, NaN when none. It stands for nv_inference_request_summary_us's median, "
    "which for a decoupled model covers only execute.",
)
STEP_REQUEST_STEPS: Final = Metric(
    "duotone_step_request_steps",
    "Step-batched tiers: steps computed per request when it left the loop (answered, "
    "cancelled or past its deadline).",
)
PARTIAL_IMAGES_SENT: Final = Metric(
    "duotone_partial_images_total",
    "Step-batched tiers: preview images (partial_images of streamed requests) sent.",
)
RUNTIME_LABELS: Final = (MODEL, TIER)
"""Labels of every runtime family above (besides its own)."""

# ---------------------------------------------------------------- the router

ROUTER_REQUESTS: Final = Metric(
    "duotone_router_requests_total",
    "Requests answered, by serving tier, HTTP status and API key name.",
    (TIER, STATUS, KEY),
)
ROUTER_ROUTES: Final = Metric(
    "duotone_router_routes_total",
    "Routing decisions: route is requested, split or overflow; tier serves it.",
    (TIER, ROUTE),
)
ROUTER_OVERFLOWS: Final = Metric(
    "duotone_router_overflows_total",
    "Requests a saturated tier passed to another (from -> to).",
    (FROM_TIER, TO_TIER),
)
ROUTER_TIER_DEMAND: Final = Metric(
    "duotone_router_tier_demand_total",
    "Requests that wanted each tier before overflow (wakes a tier scaled to zero).",
    (TIER,),
)
ROUTER_REQUEST_DURATION: Final = Metric(
    "duotone_router_request_duration_seconds",
    "Time from request received to response ready, by serving tier.",
    (TIER,),
)
ROUTER_IN_FLIGHT: Final = Metric("duotone_router_in_flight_requests", "Requests being handled now.")
ROUTER_PENDING: Final = Metric(
    "duotone_router_pending_requests",
    "Requests waiting for a ready pod of the tier (e.g. scaled to zero).",
    (TIER,),
)
ROUTER_OUTSTANDING: Final = Metric(
    "duotone_router_backend_outstanding_requests",
    "Requests sent to the tier's pods and not yet answered.",
    (TIER,),
)
ROUTER_BACKENDS: Final = Metric(
    "duotone_router_backends", "Ready pods known for the tier.", (TIER,)
)
ROUTER_PENDING_REFUSALS: Final = Metric(
    "duotone_router_pending_refusals_total",
    "Requests refused at once (503) because the tier's pending queue was full.",
    (TIER,),
)
ROUTER_RETRIES: Final = Metric(
    "duotone_router_backend_retries_total",
    "Requests retried on another pod, by cause (connect, error, unresponsive).",
    (TIER, CAUSE),
)
ROUTER_EJECTIONS: Final = Metric(
    "duotone_router_backend_ejections_total",
    "Pods ejected from routing, by cause (errors, connect, not_ready, unresponsive).",
    (TIER, CAUSE),
)
ROUTER_EJECTED: Final = Metric(
    "duotone_router_ejected_backends", "Pods of the tier ejected from routing now.", (TIER,)
)
ROUTER_BACKEND_ERRORS: Final = Metric(
    "duotone_router_backend_errors_total",
    "Failed backend calls by tier and kind (connect, queue_full, timeout, ...).",
    (TIER, FAILURE),
)
ROUTER_CANCELLED: Final = Metric(
    "duotone_router_cancelled_requests_total",
    "Requests whose client went away; the upstream call was cancelled.",
    (TIER,),
)
ROUTER_USAGE_TOKENS: Final = Metric(
    "duotone_router_usage_tokens_total",
    "Usage answered to clients, for chargeback: kind input is prompt tokens as the tier's "
    "tokenizer counts them, kind output is image-steps computed (images x denoising steps run).",
    (TIER, KEY, KIND),
)
ROUTER_MODERATION_BLOCKED: Final = Metric(
    "duotone_router_moderation_blocked_total",
    "Requests refused by the moderation check (HTTP 400 moderation_blocked) before any tier "
    "saw them, by API key name.",
    (KEY,),
)
ROUTER_CONFIG_RELOADS: Final = Metric(
    "duotone_router_config_reloads_total",
    "Routing table reloads by result (ok or invalid).",
    (RESULT,),
)
ROUTER_EFFICIENT_PERCENT: Final = Metric(
    "duotone_router_efficient_percent",
    "Configured share of unnamed requests sent to the efficient tier.",
)
ROUTER_TIER_SLO_P50: Final = Metric(
    "duotone_router_tier_slo_p50_latency_seconds",
    "The tier's p50 latency objective (spec slo.p50LatencyMs), the dashboards' SLO line.",
    (TIER,),
)

# ---------------------------------------------------------------- the operator

RECONCILES: Final = Metric(
    "duotone_operator_reconciles_total",
    "Reconciles of ImageModelDeployments by result (success, problem, error).",
    (RESULT,),
)
RECONCILE_DURATION: Final = Metric(
    "duotone_operator_reconcile_duration_seconds", "Time to reconcile one ImageModelDeployment."
)
LAST_SUCCESSFUL_RECONCILE: Final = Metric(
    "duotone_operator_last_successful_reconcile_timestamp_seconds",
    "Unix time of the last successful reconcile.",
)
CHILDREN_APPLIED: Final = Metric(
    "duotone_operator_children_applied_total",
    "Child objects applied by server-side apply.",
    (KIND,),
)
CHILDREN_DELETED: Final = Metric(
    "duotone_operator_children_deleted_total", "Child objects deleted (removed tiers).", (KIND,)
)
API_REQUESTS: Final = Metric(
    "duotone_operator_api_requests_total",
    "Requests of the operator's Kubernetes client (reconcile, repair, autoscaler; not Kopf's "
    "own watches and progress patches), by HTTP verb.",
    (VERB,),
)
LEADER: Final = Metric(
    "duotone_operator_leader",
    "1 while this operator replica holds the Lease and writes, 0 while it stands by.",
)
REPAIRS: Final = Metric(
    "duotone_operator_drift_repairs_total",
    "Repairs of children deleted or edited out of band (each restores one IMD's drifted children).",
)
WATCH_STALE: Final = Metric(
    "duotone_operator_watch_stale_objects",
    "IMDs whose latest version the watch has not delivered within the grace period.",
)

# ---------------------------------------------------------------- the operator's autoscaler

SCALE_DECISIONS: Final = Metric(
    "duotone_autoscaler_decisions_total",
    "Autoscaler decisions by direction (up, down, none) and whether metrics were held.",
    (*_PER_TIER, DIRECTION, HELD),
)
SCALE_PATCHES: Final = Metric(
    "duotone_autoscaler_scale_patches_total",
    "Replica changes written through /scale, by direction and cause (the dashboard's annotations).",
    (*_PER_TIER, DIRECTION, CAUSE),
)
SCALE_ERRORS: Final = Metric(
    "duotone_autoscaler_errors_total",
    "Autoscaler ticks that failed to read or to act.",
    (NAMESPACE,),
)
REPLICAS_CURRENT: Final = Metric(
    "duotone_autoscaler_current_replicas", "The tier Deployment's spec.replicas.", _PER_TIER
)
REPLICAS_DESIRED: Final = Metric(
    "duotone_autoscaler_desired_replicas", "Replicas the autoscaler decided on.", _PER_TIER
)
REPLICAS_WANTED: Final = Metric(
    "duotone_autoscaler_wanted_replicas",
    "Replicas the tier's load asks for before max and the GPU budget.",
    _PER_TIER,
)
REPLICAS_MAX: Final = Metric(
    "duotone_autoscaler_max_replicas", "The tier's replicas.max.", _PER_TIER
)
QUEUE_DEPTH: Final = Metric(
    "duotone_autoscaler_queue_depth", "Queued, running and router-pending requests.", _PER_TIER
)
P50_LATENCY_MS: Final = Metric(
    "duotone_autoscaler_p50_latency_ms", "Observed p50 latency of the tier.", _PER_TIER
)
SLO_P50_LATENCY_MS: Final = Metric(
    "duotone_autoscaler_slo_p50_latency_ms", "The tier's p50 objective.", _PER_TIER
)
GPU_BUDGET_LIMITED: Final = Metric(
    "duotone_autoscaler_gpu_budget_limited",
    "1 while the GPU budget holds the tier back.",
    _PER_TIER,
)
LAST_DECISION: Final = Metric(
    "duotone_autoscaler_last_decision_timestamp_seconds",
    "Unix time of the tier's latest decision.",
    _PER_TIER,
)
TICK_DURATION: Final = Metric(
    "duotone_autoscaler_tick_duration_seconds",
    "Time to read metrics, decide and act for one IMD.",
)


def catalogue() -> tuple[Metric, ...]:
    """Every family above, in declaration order (docs and tests list them from here)."""
    return tuple(value for value in globals().values() if isinstance(value, Metric))


def series_names() -> frozenset[str]:
    """Every series name a query may write: families plus histogram and summary parts."""
    names: set[str] = set()
    for metric in catalogue():
        names |= {metric.name, metric.bucket, metric.count, metric.sum}
    return frozenset(names)
