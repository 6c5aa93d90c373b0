"""The autoscaler end to end: a real Prometheus scrapes a real tritonserver (CPU, tiny pipeline)
and a real router; the operator reads Prometheus and scales the tier Deployments in the real
API server, under its real RBAC.

The pods in the API server run on kwok's fake nodes, so the data plane is the local processes:
one efficient server whatever the Deployment says, and a flagship server this test starts when
the operator wakes the flagship (standing in for the kubelet).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from duotone_contracts.api import parse_imd
from duotone_runtime.launcher import TritonNotFoundError, find_tritonserver
from duotone_testbed.clients import metric_sum, scrape_metrics
from duotone_testbed.stack import LocalStack
from tests.support import presets
from tests.support.cluster import Cluster, wait_for
from tests.support.operator_process import OperatorProcess, wait_ready
from tests.support.prometheus import Prometheus, ScrapeTarget, start_prometheus
from tests.support.router_client import generate_status

NAME = "sd"


def _manifest(namespace: str, prometheus_url: str) -> dict[str, Any]:
    """Efficient traffic only, flagship at zero; a 5 s window so scale-down shows quickly."""
    return (
        presets.scaled_pair(NAME, namespace, prometheus_url)
        .tier("efficient")
        .batching(maxBatchSize=8, maxQueueDelayMs=5, maxQueueSize=64, requestTimeoutMs=60000)
        .slo(p50_ms=60000)
        .tier("flagship")
        .batching(maxBatchSize=1, maxQueueDelayMs=0, maxQueueSize=4, requestTimeoutMs=150000)
        .slo(p50_ms=60000)
        .traffic(efficientPercent=100, overflow="reject")
        .autoscaling(scaleDownStabilizationSeconds=5, scaleToZeroIdleSeconds=3600)
        .build()
    )


@dataclass
class Scene:
    namespace: str
    stack: LocalStack
    prometheus: Prometheus
    operator: OperatorProcess
    router_url: str


@pytest.fixture
def scene(cluster: Cluster, namespace: str, run_operator: Any, tmp_path: Path) -> Iterator[Scene]:
    try:
        find_tritonserver(None)
    except TritonNotFoundError as error:
        pytest.fail(f"the autoscaler test needs tritonserver: {error}")
    # The IMD's Prometheus URL is known only once Prometheus runs, and Prometheus needs the
    # servers' ports: parse with a placeholder URL first, create the real IMD afterwards.
    stack = LocalStack.from_imd(
        parse_imd(_manifest(namespace, "http://127.0.0.1:1")),
        tmp_path / "stack",
        pods={"efficient": 1, "flagship": 0},  # type: ignore[dict-item]
    ).start()
    prometheus: Prometheus | None = None
    try:
        assert stack.router is not None
        efficient = stack.servers["efficient"][0]
        prometheus = start_prometheus(
            tmp_path / "prometheus",
            [
                ScrapeTarget(
                    f"127.0.0.1:{efficient.metrics_port}",
                    {"namespace": namespace, "service": f"{NAME}-efficient"},
                ),
                ScrapeTarget(
                    f"127.0.0.1:{stack.router.metrics_port}",
                    {"namespace": namespace, "service": f"{NAME}-router"},
                ),
            ],
        )
        operator = run_operator(namespace, extra=("--autoscale-interval-seconds=1",))
        cluster.create(_manifest(namespace, prometheus.url), namespace)
        wait_ready(cluster, namespace, NAME, operator)
        yield Scene(namespace, stack, prometheus, operator, stack.router.url)
    finally:
        if prometheus is not None:
            prometheus.stop()
        stack.stop()


def _replicas(cluster: Cluster, namespace: str, tier: str) -> int:
    deployment = cluster.get_json("deployment", f"{NAME}-{tier}", f"--namespace={namespace}")
    return int(deployment["spec"]["replicas"])


def _tier_status(cluster: Cluster, namespace: str, tier: str) -> dict[str, Any]:
    status = cluster.get_json("imd", NAME, f"--namespace={namespace}").get("status") or {}
    found: dict[str, Any] = (status.get("tiers") or {}).get(tier) or {}
    return found


def _events(cluster: Cluster, namespace: str, reason: str) -> list[str]:
    events = cluster.get_json("events", f"--namespace={namespace}")["items"]
    return [e["message"] for e in events if e["reason"] == reason]


def _wait(scene: Scene, condition: Any, what: str, timeout_s: float = 90) -> Any:
    try:
        return wait_for(condition, timeout_s=timeout_s, what=what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{scene.operator.log()}") from None


def test_queue_depth_scales_a_tier_up_and_back_down(cluster: Cluster, scene: Scene) -> None:
    namespace = scene.namespace
    assert _replicas(cluster, namespace, "efficient") == 1
    stop = threading.Event()
    statuses: list[int] = []

    def client() -> None:
        while not stop.is_set():
            statuses.append(
                generate_status(scene.router_url, {"prompt": "load", "tier": "efficient"})
            )

    # Bounded load: 4 clients in a loop keep about 4 requests queued or running; at 2 per
    # replica that asks for 2 replicas (below the panic ratio, so no panic hold).
    with ThreadPoolExecutor(max_workers=4) as pool:
        clients = [pool.submit(client) for _ in range(4)]
        try:
            _wait(
                scene,
                lambda: _replicas(cluster, namespace, "efficient") == 2,
                "the efficient tier to scale to 2 under load",
            )
            seen = _wait(
                scene,
                lambda: (
                    s
                    if (s := _tier_status(cluster, namespace, "efficient")).get("p50LatencyMs")
                    else None
                ),
                "status to show the observed p50",
            )
        finally:
            stop.set()
        for future in clients:
            future.result()
    assert statuses, "the load generator sent requests"
    assert set(statuses) == {200}, statuses

    scaled = _tier_status(cluster, namespace, "efficient")
    assert scaled["lastScaleReason"].startswith("scale up 1 -> 2: queue "), scaled
    assert "per replica wants 2" in scaled["lastScaleReason"]
    assert seen["p50LatencyMs"] > 0
    assert any(
        m.startswith("efficient: scale up 1 -> 2: queue ")
        for m in _events(cluster, namespace, "ScaledUp")
    )
    managers = {
        entry["manager"]
        for entry in cluster.get_json(
            "deployment", f"{NAME}-efficient", f"--namespace={namespace}", "--show-managed-fields"
        )["metadata"]["managedFields"]
        if "f:replicas" in json.dumps(entry.get("fieldsV1", {}))
    }
    assert "duotone-autoscaler" in managers

    # Idle again: down after the 5 s stabilization window, never below min 1.
    _wait(
        scene,
        lambda: _replicas(cluster, namespace, "efficient") == 1,
        "the efficient tier to scale back to 1",
    )
    final = _wait(
        scene,
        lambda: (
            s
            if (s := _tier_status(cluster, namespace, "efficient")).get("desiredReplicas") == 1
            else None
        ),
        "status desiredReplicas 1",
    )
    assert final["lastScaleReason"].startswith("scale down 2 -> 1: highest recommendation"), final
    assert any(
        m.startswith("efficient: scale down 2 -> 1")
        for m in _events(cluster, namespace, "ScaledDown")
    )
    operator_metrics = scrape_metrics(f"http://127.0.0.1:{scene.operator.metrics_port}/metrics")
    assert (
        metric_sum(operator_metrics, "duotone_autoscaler_scale_patches_total", tier="efficient")
        >= 2
    )
    assert metric_sum(operator_metrics, "duotone_autoscaler_max_replicas", tier="efficient") == 3


def test_a_request_waiting_in_the_router_wakes_a_tier_at_zero(
    cluster: Cluster, scene: Scene
) -> None:
    namespace = scene.namespace
    assert _replicas(cluster, namespace, "flagship") == 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        # No flagship pod and no overflow: the router holds the request and counts it pending.
        waiting: Future[int] = pool.submit(
            generate_status, scene.router_url, {"prompt": "wake up", "tier": "flagship"}, 150
        )
        _wait(
            scene,
            lambda: (
                scene.prometheus.value(
                    f'duotone_router_pending_requests{{namespace="{namespace}",tier="flagship"}}'
                )
                == 1
            ),
            "Prometheus to see the pending request",
        )
        _wait(
            scene,
            lambda: _replicas(cluster, namespace, "flagship") == 1,
            "the flagship to wake from zero",
        )
        status = _tier_status(cluster, namespace, "flagship")
        assert status["lastScaleReason"].startswith("scale up 0 -> 1: queue 1 (0 queued"), status
        assert "1 waiting in routers" in status["lastScaleReason"]
        assert not waiting.done(), "the request waits for a pod rather than failing"

        # Stand in for the kubelet: the woken pod starts and the router learns of it.
        assert scene.stack.router is not None
        started = time.monotonic()
        server = scene.stack.start_server("flagship", 0)
        scene.stack.router.write_backends(scene.stack.addresses())
        assert waiting.result(timeout=120) == 200
        assert time.monotonic() - started < 120
    assert server.metric("nv_inference_request_success") >= 1

    # The woken pod's metrics are not scraped in this test: missing, so the size is held at 1
    # (never down to 0 on a missing reading).
    def held_decisions() -> float:
        samples = scrape_metrics(f"http://127.0.0.1:{scene.operator.metrics_port}/metrics")
        return metric_sum(
            samples, "duotone_autoscaler_decisions_total", tier="flagship", held="true"
        )

    before = held_decisions()
    _wait(scene, lambda: held_decisions() >= before + 3, "three more held decisions", 30)
    assert _replicas(cluster, namespace, "flagship") == 1
