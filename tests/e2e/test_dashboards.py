"""Every query of the Grafana dashboard returns data from a real Prometheus that scrapes real
processes: two tritonservers (CPU, tiny pipeline), the router and the operator (autoscaling an
IMD in the real API server), with the chart's recording rules loaded.

Prometheus finds its targets the way the chart's ServiceMonitors make prometheus-operator find
them: the targets carry the `__meta_kubernetes_*` labels of the Services the operator created,
and the scrape configs apply the ServiceMonitors' relabelings as rendered by Helm. So the
`namespace`, `service`, `imd` and `tier` labels that the dashboard, the alerts and the
autoscaler select on are produced here exactly as in a cluster.

Named fake (the GPU boundary): the tiers declare `resources.gpus: 1`, so kwok schedules them on
its fake GPU nodes and the runtime reports one allocated GPU, while the local servers compute on
the CPU (`--device cpu`).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from duotone_contracts.api import parse_imd
from duotone_monitoring.dashboard import build_dashboard
from duotone_runtime.launcher import TritonNotFoundError, find_tritonserver
from duotone_testbed.stack import LocalStack
from tests.support import presets
from tests.support.cluster import Cluster, wait_for
from tests.support.helm import only, render, write_rule_file
from tests.support.operator_process import OperatorProcess, wait_ready
from tests.support.prometheus import Prometheus, ScrapeTarget, start_prometheus
from tests.support.router_client import generate_status

NAME = "sd"
OPERATOR_NAMESPACE = "duotone-system"
OPERATOR_SERVICE = "duotone-metrics"
VARIABLES = {"$__rate_interval": "5m", "${datasource}": "prometheus"}


def _manifest(namespace: str, prometheus_url: str) -> dict[str, Any]:
    """Both tiers up and split 50/50 with overflow; GPUs declared (kwok GPU nodes) so the cost
    panels have data; an efficient SLO of 20 ms that CPU always breaches."""
    return (
        presets.scaled_pair(NAME, namespace, prometheus_url)
        .tier("efficient")
        .resources(gpus=1)
        .limits(maxImagesPerRequest=2)
        .batching(maxBatchSize=8, maxQueueDelayMs=5, maxQueueSize=64, requestTimeoutMs=60000)
        .slo(p50_ms=20)
        .tier("flagship", min=1)
        .resources(gpus=1)
        .batching(maxBatchSize=4, maxQueueDelayMs=0, maxQueueSize=16, requestTimeoutMs=60000)
        .slo(p50_ms=60000)
        .traffic(efficientPercent=50, overflow="efficient")
        .autoscaling(scaleDownStabilizationSeconds=300)
        .build()
    )


def _meta_labels(namespace: str, service: str, labels: dict[str, str]) -> dict[str, str]:
    """What Kubernetes service discovery attaches to an endpoint of this Service."""
    meta = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_service_name": service}
    for key, value in labels.items():
        meta[f"__meta_kubernetes_service_label_{re.sub(r'[^a-zA-Z0-9_]', '_', key)}"] = value
    return meta


def _relabel_configs(endpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """prometheus-operator's own relabelings (namespace, service, job) and then the
    ServiceMonitor endpoint's, in Prometheus' spelling."""
    configs: list[dict[str, Any]] = [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
    ]
    for relabeling in endpoint.get("relabelings", []):
        configs.append(
            {
                "source_labels": relabeling["sourceLabels"],
                "target_label": relabeling["targetLabel"],
            }
        )
    return configs


def _monitored(
    monitor: dict[str, Any], address: str, namespace: str, service: str, labels: dict[str, str]
) -> ScrapeTarget:
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items(), (monitor["metadata"]["name"], labels)
    endpoint = monitor["spec"]["endpoints"][0]
    return ScrapeTarget(
        address,
        _meta_labels(namespace, service, labels),
        relabel_configs=_relabel_configs(endpoint),
        honor_labels=bool(endpoint.get("honorLabels", False)),
        metrics_path=endpoint.get("path", "/metrics"),
    )


@dataclass
class Scene:
    namespace: str
    stack: LocalStack
    prometheus: Prometheus
    operator: OperatorProcess


@pytest.fixture
def scene(cluster: Cluster, namespace: str, run_operator: Any, tmp_path: Path) -> Iterator[Scene]:
    try:
        find_tritonserver(None)
    except TritonNotFoundError as error:
        pytest.fail(f"the dashboard test needs tritonserver: {error}")
    cluster.wait_for_free_gpus(2)
    monitors = {
        o["metadata"]["name"]: o
        for o in render({"serviceMonitor": {"enabled": True}}, tmp_path / "chart")
        if o["kind"] == "ServiceMonitor"
    }
    operator_service = only(render({}, tmp_path / "chart"), "Service")
    rules = write_rule_file({}, tmp_path / "rules")

    # Prometheus needs the servers' ports, the IMD needs Prometheus' URL: start the servers
    # from a placeholder IMD, then create the real one.
    stack = LocalStack.from_imd(
        parse_imd(_manifest(namespace, "http://127.0.0.1:1")), tmp_path / "stack"
    )
    stack.extra_server_args = ("--device", "cpu")
    stack.start()
    prometheus: Prometheus | None = None
    try:
        operator = run_operator(namespace, extra=("--autoscale-interval-seconds=1",))
        cluster.create(_manifest(namespace, "http://127.0.0.1:1"), namespace)
        wait_ready(cluster, namespace, NAME, operator)

        def service_labels(name: str) -> dict[str, str]:
            service = cluster.get_json("service", name, f"--namespace={namespace}")
            labels: dict[str, str] = service["metadata"]["labels"]
            return labels

        assert stack.router is not None
        targets = [
            _monitored(
                monitors["duotone-tiers"],
                f"127.0.0.1:{servers[0].metrics_port}",
                namespace,
                f"{NAME}-{tier}",
                service_labels(f"{NAME}-{tier}"),
            )
            for tier, servers in stack.servers.items()
        ]
        targets.append(
            _monitored(
                monitors["duotone-routers"],
                f"127.0.0.1:{stack.router.metrics_port}",
                namespace,
                f"{NAME}-router",
                service_labels(f"{NAME}-router"),
            )
        )
        targets.append(
            _monitored(
                monitors["duotone"],
                f"127.0.0.1:{operator.metrics_port}",
                OPERATOR_NAMESPACE,
                OPERATOR_SERVICE,
                operator_service["metadata"]["labels"],
            )
        )
        prometheus = start_prometheus(tmp_path / "prometheus", targets, rule_files=[rules])
        # Point the autoscaler at this Prometheus now that it runs.
        cluster.kubectl(
            "patch",
            "imd",
            NAME,
            f"--namespace={namespace}",
            "--type=merge",
            "--patch",
            json.dumps({"spec": {"autoscaling": {"metrics": {"prometheusUrl": prometheus.url}}}}),
        )
        yield Scene(namespace, stack, prometheus, operator)
    finally:
        if prometheus is not None:
            prometheus.stop()
        stack.stop()


def _queries(namespace: str) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and annotation, variables filled in."""
    variables = {"$namespace": namespace, "$imd": NAME, **VARIABLES}
    dashboard = build_dashboard()
    found = [
        (f"{panel['title']} / {target['legendFormat']}", target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    found += [(a["name"], a["expr"]) for a in dashboard["annotations"]["list"] if "expr" in a]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append((f"variable {variable['name']}", variable["query"]["query"]))
    filled = []
    for where, expr in found:
        query = expr
        for variable, value in variables.items():
            query = query.replace(variable, value)
        filled.append((where, query))
    return filled


def _label_values(prometheus: Prometheus, query: str) -> list[str]:
    """Grafana's label_values(metric, label) as the series API answers it."""
    match = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
    assert match, query
    metric, label = match.groups()
    return sorted({s["metric"].get(label, "") for s in prometheus.query(metric)} - {""})


def test_every_dashboard_query_returns_data(scene: Scene, cluster: Cluster) -> None:
    namespace, router = scene.namespace, scene.stack.router
    assert router is not None
    stop = threading.Event()
    statuses: list[int] = []

    def client(tier: str) -> None:
        while not stop.is_set():
            statuses.append(generate_status(router.url, {"prompt": "dashboards", "tier": tier}))

    # Efficient: 4 clients keep ~4 requests in flight, twice its target of 2 per replica, so
    # the autoscaler scales it up (the annotation query needs a scale event). Flagship: one.
    with ThreadPoolExecutor(max_workers=5) as pool:
        clients = [pool.submit(client, "efficient") for _ in range(4)]
        clients.append(pool.submit(client, "flagship"))
        try:
            wait_for(
                lambda: (
                    cluster.get_json("deployment", f"{NAME}-efficient", f"--namespace={namespace}")[
                        "spec"
                    ]["replicas"]
                    > 1
                ),
                timeout_s=120,
                what="the efficient tier to scale up",
            )
            missing: list[str] = []

            def every_query_has_data() -> bool:
                missing.clear()
                for where, expr in _queries(namespace):
                    if expr.startswith("label_values("):
                        empty = not _label_values(scene.prometheus, expr)
                    else:
                        empty = not scene.prometheus.query(expr)
                    if empty:
                        missing.append(f"{where}: {expr}")
                return not missing

            try:
                # The chart's recording rules run every 30 s.
                wait_for(every_query_has_data, timeout_s=150, what="every query to have data")
            except TimeoutError:
                pytest.fail("queries without data:\n" + "\n".join(missing))
        finally:
            stop.set()
        for future in clients:
            future.result()
    assert statuses
    assert set(statuses) == {200}, set(statuses)

    # The labels the panels select on are the ones the ServiceMonitors' relabelings produced.
    tiers = scene.prometheus.query(
        f'duotone:tier_allocated_gpus:sum{{namespace="{namespace}", imd="{NAME}"}}'
    )
    assert {s["metric"]["tier"]: float(s["value"][1]) for s in tiers} == {
        "efficient": 1.0,
        "flagship": 1.0,
    }
    slo = scene.prometheus.query(f'duotone:tier_latency_slo_seconds{{namespace="{namespace}"}}')
    assert {s["metric"]["tier"]: float(s["value"][1]) for s in slo} == {
        "efficient": 0.02,
        "flagship": 60.0,
    }
    # The efficient tier's 20 ms objective is missed on CPU: its breach series reads 1 (polled:
    # the rule group runs every 30 s).
    wait_for(
        lambda: (
            scene.prometheus.value(
                f'duotone:tier_latency_slo_breached:5m{{namespace="{namespace}", tier="efficient"}}'
            )
            == 1.0
        ),
        timeout_s=90,
        what="the efficient tier's latency breach series to read 1",
    )
    events = scene.prometheus.query(
        "sum by (tier, direction, cause) (duotone_autoscaler_scale_patches_total"
        f'{{namespace="{namespace}", imd="{NAME}"}})'
    )
    assert {(s["metric"]["tier"], s["metric"]["direction"]) for s in events} >= {
        ("efficient", "up")
    }
