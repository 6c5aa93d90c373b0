"""The Grafana dashboard for SREs, as code: `hack/generate.py` writes it to the Helm chart.

Per tier: request rate, p50 against the SLO line, p95, error and overflow rates, queue depth,
replicas current vs desired (scale events as annotations), images per second per GPU and
GPU-seconds per image; then an operator health row. Panels read the chart's recording rules
(`duotone:*`, charts/duotone/templates/prometheusrule.yaml) where one exists, so the dashboard
and the alerts agree. tests/e2e/test_dashboards.py runs every query against a real Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

UID = "duotone-serving"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SELECTOR = 'namespace="$namespace", imd="$imd"'
"""Every per-IMD panel selects the IMD chosen in the dashboard's variables."""

WIDTH = 24
"""Grafana's grid is 24 columns wide."""


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str
    width: int = 8
    height: int = 8
    kind: str = "timeseries"
    overrides: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)


def _slo_line_override() -> dict[str, Any]:
    """Series named "... SLO" are drawn dashed, so the objective reads as a line, not a load."""
    return {
        "matcher": {"id": "byRegexp", "options": ".* SLO$"},
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.lineWidth", "value": 2},
        ],
    }


def _latency_vs_slo(quantile: str, description: str) -> Panel:
    """A router latency quantile per tier (recorded as `<quantile>_5m`) with the SLO line."""
    return Panel(
        f"{quantile} latency vs SLO",
        description,
        (
            Query(
                f"max by (tier) (duotone:tier_request_latency_seconds:{quantile}_5m{{{SELECTOR}}})",
                f"{{{{tier}}}} {quantile}",
            ),
            Query(
                f"max by (tier) (duotone:tier_latency_slo_seconds{{{SELECTOR}}})",
                "{{tier}} SLO",
            ),
        ),
        "s",
        overrides=(_slo_line_override(),),
    )


ROWS: tuple[Row, ...] = (
    Row(
        "Requests and SLOs (per tier)",
        (
            Panel(
                "Request rate",
                "Requests answered per second by the serving tier (client-gone 499s excluded).",
                (Query(f"sum by (tier) (duotone:tier_requests:rate5m{{{SELECTOR}}})", "{{tier}}"),),
                "reqps",
            ),
            _latency_vs_slo(
                "p50",
                "Router-measured median latency per tier against the tier's slo.p50LatencyMs; "
                "the latency SLO alerts fire on the share of time it is above the line.",
            ),
            _latency_vs_slo(
                "p95", "Router-measured 95th percentile per tier, with the p50 objective for scale."
            ),
            Panel(
                "Error rate (5xx share)",
                "Share of each tier's requests answered with a server error: what the "
                "availability SLO counts.",
                (
                    Query(
                        f"max by (tier) (duotone:tier_request_errors:ratio_rate5m{{{SELECTOR}}})",
                        "{{tier}}",
                    ),
                ),
                "percentunit",
                width=12,
            ),
            Panel(
                "Overflow rate",
                "Requests a saturated tier passed to the other one (served degraded).",
                (
                    Query(
                        "sum by (from_tier, to_tier) "
                        f"(duotone:router_overflows:rate5m{{{SELECTOR}}})",
                        "{{from_tier}} -> {{to_tier}}",
                    ),
                ),
                "reqps",
                width=12,
            ),
        ),
    ),
    Row(
        "Capacity and autoscaling",
        (
            Panel(
                "Queue depth",
                "Requests queued in Triton, running in the Python backend, and waiting in the "
                "routers for a pod (a tier at zero): what the autoscaler's queue target divides.",
                (
                    Query(
                        f"sum by (tier) (duotone:tier_queued_requests:sum{{{SELECTOR}}})",
                        "{{tier}} queued",
                    ),
                    Query(
                        f"sum by (tier) (duotone_executing_requests{{{SELECTOR}}})",
                        "{{tier}} running",
                    ),
                    Query(
                        f"max by (tier) (duotone_router_pending_requests{{{SELECTOR}}})",
                        "{{tier}} waiting in routers",
                    ),
                ),
                "short",
                width=12,
            ),
            Panel(
                "Replicas: current vs desired",
                "The autoscaler's decision, the Deployment's size and the pods the routers see "
                "ready; scale events (with their cause) are the annotations.",
                (
                    Query(
                        f"max by (tier) (duotone_autoscaler_desired_replicas{{{SELECTOR}}})",
                        "{{tier}} desired",
                    ),
                    Query(
                        f"max by (tier) (duotone_autoscaler_current_replicas{{{SELECTOR}}})",
                        "{{tier}} current",
                    ),
                    Query(
                        f"max by (tier) (duotone_router_backends{{{SELECTOR}}})",
                        "{{tier}} ready",
                    ),
                    Query(
                        f"max by (tier) (duotone_autoscaler_max_replicas{{{SELECTOR}}})",
                        "{{tier}} max",
                    ),
                ),
                "short",
                width=12,
            ),
        ),
    ),
    Row(
        "Cost",
        (
            Panel(
                "Images per second per GPU",
                "Images generated per second divided by the GPUs the tier's pods hold.",
                (
                    Query(
                        f"max by (tier) (duotone:tier_images_per_gpu:rate5m{{{SELECTOR}}})",
                        "{{tier}}",
                    ),
                ),
                "short",
            ),
            Panel(
                "GPU-seconds per image",
                "Allocated GPU time per image, idle time included: the cost per image.",
                (
                    Query(
                        f"max by (tier) (duotone:tier_gpu_seconds_per_image:rate5m{{{SELECTOR}}})",
                        "{{tier}}",
                    ),
                ),
                "s",
            ),
            Panel(
                "Allocated GPUs",
                "GPUs held by the tier's running pods (resources.gpus per pod).",
                (
                    Query(
                        f"max by (tier) (duotone:tier_allocated_gpus:sum{{{SELECTOR}}})",
                        "{{tier}}",
                    ),
                ),
                "short",
            ),
        ),
    ),
    Row(
        "Operator health",
        (
            Panel(
                "Reconciles by result",
                "success, problem (an impossible spec, reported as Ready=False) or error "
                "(retried with backoff).",
                (
                    Query(
                        "sum by (result) "
                        "(rate(duotone_operator_reconciles_total[$__rate_interval]))",
                        "{{result}}",
                    ),
                ),
                "ops",
                width=6,
            ),
            Panel(
                "Reconcile duration p95",
                "95th percentile time to reconcile one IMD.",
                (
                    Query(
                        "histogram_quantile(0.95, sum by (le) "
                        "(rate(duotone_operator_reconcile_duration_seconds_bucket"
                        "[$__rate_interval])))",
                        "p95",
                    ),
                ),
                "s",
                width=6,
            ),
            Panel(
                "Since last successful reconcile",
                "Seconds since the operator last reconciled an IMD successfully.",
                (
                    Query(
                        "time() - "
                        "max(duotone_operator_last_successful_reconcile_timestamp_seconds)",
                        "age",
                    ),
                ),
                "s",
                width=6,
                kind="stat",
            ),
            Panel(
                "Autoscaler",
                "Time per autoscaler round (p95), failed rounds per second and IMDs whose "
                "watch lags the API server.",
                (
                    Query(
                        "histogram_quantile(0.95, sum by (le) "
                        "(rate(duotone_autoscaler_tick_duration_seconds_bucket[$__rate_interval])))",
                        "tick p95 (s)",
                    ),
                    Query(
                        "sum(rate(duotone_autoscaler_errors_total[$__rate_interval])) or vector(0)",
                        "errors/s",
                    ),
                    Query("max(duotone_operator_watch_stale_objects)", "watch-stale IMDs"),
                ),
                "short",
                width=6,
            ),
        ),
    ),
)

SCALE_EVENTS = {
    "name": "Scale events",
    "datasource": DATASOURCE,
    "enable": True,
    "iconColor": "orange",
    "expr": "sum by (tier, direction, cause) "
    f"(increase(duotone_autoscaler_scale_patches_total{{{SELECTOR}}}[2m])) > 0",
    "step": "1m",
    "titleFormat": "{{tier}} scaled {{direction}}",
    "textFormat": "cause: {{cause}} (the full reason: kubectl get events, ScaledUp/ScaledDown)",
    "tagKeys": "tier,direction,cause",
}
"""Cause is one word (ScaleDecision.cause); the reason with its numbers is in the events."""


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "includeAll": False,
        "multi": False,
        "current": {},
        "hide": 0,
    }


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    refs = "ABCDEFGHIJ"
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {
            "defaults": {"unit": panel.unit, "min": 0},
            "overrides": list(panel.overrides),
        },
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}}
        if panel.kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"]}},
        "targets": [
            {"refId": refs[i], "datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend}
            for i, q in enumerate(panel.queries)
        ],
    }


def build_dashboard() -> dict[str, Any]:
    """The dashboard's JSON model (Grafana schema 39): rows laid out left to right."""
    panels: list[dict[str, Any]] = []
    y, next_id = 0, 1
    for row in ROWS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": WIDTH, "h": 1},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > WIDTH:
                x, y = 0, y + line_height
                line_height = 0
            panels.append(_panel(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return {
        "uid": UID,
        "title": "Duotone: two-tier image serving",
        "description": "Per-tier SLOs, capacity, cost per image and operator health.",
        "tags": ["duotone", "slo"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                _variable(
                    "namespace", "Namespace", "label_values(duotone_router_backends, namespace)"
                ),
                _variable(
                    "imd",
                    "ImageModelDeployment",
                    'label_values(duotone_router_backends{namespace="$namespace"}, imd)',
                ),
            ]
        },
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                SCALE_EVENTS,
            ]
        },
        "panels": panels,
    }
