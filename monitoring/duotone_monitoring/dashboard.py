"""The Grafana dashboard for SREs, as code: `hack/generate.py` writes it to the Helm chart.

Per tier: request rate, p50 against the SLO line, p95, error and overflow rates, queue depth,
replicas current vs desired (scale events as annotations), images per second per GPU and
GPU-seconds per image; then an operator health row. Panels read the chart's recording rules
(`duotone:*`, `duotone_monitoring.rules`) where one exists, so the dashboard and the alerts
agree; every other series by its name in `duotone_contracts.metrics`.
tests/e2e/test_dashboards.py runs every query against a real Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from duotone_contracts import metrics as m
from duotone_monitoring import rules

UID = "duotone-serving"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SELECTOR = f'{m.NAMESPACE}="$namespace", {m.IMD}="$imd"'
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


_LATENCY_RULES = {"p50": rules.TIER_LATENCY_P50, "p95": rules.TIER_LATENCY_P95}


def _latency_vs_slo(quantile: str, description: str) -> Panel:
    """A router latency quantile per tier (recorded as `<quantile>_5m`) with the SLO line."""
    return Panel(
        f"{quantile} latency vs SLO",
        description,
        (
            Query(
                f"max by ({m.TIER}) ({_LATENCY_RULES[quantile]}{{{SELECTOR}}})",
                f"{{{{tier}}}} {quantile}",
            ),
            Query(
                f"max by ({m.TIER}) ({rules.TIER_LATENCY_SLO}{{{SELECTOR}}})",
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
                (
                    Query(
                        f"sum by ({m.TIER}) ({rules.TIER_REQUESTS_RATE}{{{SELECTOR}}})", "{{tier}}"
                    ),
                ),
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
                        f"max by ({m.TIER}) ({rules.TIER_ERROR_RATIO}5m{{{SELECTOR}}})",
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
                        f"sum by ({m.FROM_TIER}, {m.TO_TIER}) "
                        f"({rules.ROUTER_OVERFLOWS_RATE}{{{SELECTOR}}})",
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
                        f"sum by ({m.TIER}) ({rules.TIER_QUEUED}{{{SELECTOR}}})",
                        "{{tier}} queued",
                    ),
                    Query(
                        f"sum by ({m.TIER}) ({m.EXECUTING_REQUESTS.name}{{{SELECTOR}}})",
                        "{{tier}} running",
                    ),
                    Query(
                        f"max by ({m.TIER}) ({m.ROUTER_PENDING.name}{{{SELECTOR}}})",
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
                        f"max by ({m.TIER}) ({m.REPLICAS_DESIRED.name}{{{SELECTOR}}})",
                        "{{tier}} desired",
                    ),
                    Query(
                        f"max by ({m.TIER}) ({m.REPLICAS_CURRENT.name}{{{SELECTOR}}})",
                        "{{tier}} current",
                    ),
                    Query(
                        f"max by ({m.TIER}) ({m.ROUTER_BACKENDS.name}{{{SELECTOR}}})",
                        "{{tier}} ready",
                    ),
                    Query(
                        f"max by ({m.TIER}) ({m.REPLICAS_MAX.name}{{{SELECTOR}}})",
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
                        f"max by ({m.TIER}) ({rules.TIER_IMAGES_PER_GPU}{{{SELECTOR}}})",
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
                        f"max by ({m.TIER}) ({rules.TIER_GPU_SECONDS_PER_IMAGE}{{{SELECTOR}}})",
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
                        f"max by ({m.TIER}) ({rules.TIER_ALLOCATED_GPUS}{{{SELECTOR}}})",
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
                        f"sum by ({m.RESULT}) (rate({m.RECONCILES.name}[$__rate_interval]))",
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
                        f"(rate({m.RECONCILE_DURATION.bucket}"
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
                        f"time() - max({m.LAST_SUCCESSFUL_RECONCILE.name})",
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
                        f"(rate({m.TICK_DURATION.bucket}[$__rate_interval])))",
                        "tick p95 (s)",
                    ),
                    Query(
                        f"sum(rate({m.SCALE_ERRORS.name}[$__rate_interval])) or vector(0)",
                        "errors/s",
                    ),
                    Query(f"max({m.WATCH_STALE.name})", "watch-stale IMDs"),
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
    "expr": f"sum by ({m.TIER}, {m.DIRECTION}, {m.CAUSE}) "
    f"(increase({m.SCALE_PATCHES.name}{{{SELECTOR}}}[2m])) > 0",
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
                    "namespace",
                    "Namespace",
                    f"label_values({m.ROUTER_BACKENDS.name}, {m.NAMESPACE})",
                ),
                _variable(
                    "imd",
                    "ImageModelDeployment",
                    f"label_values({m.ROUTER_BACKENDS.name}"
                    f'{{{m.NAMESPACE}="$namespace"}}, {m.IMD})',
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
