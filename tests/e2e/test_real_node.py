"""The whole loop on the real node, one deployment per test: examples/tiny-cpu.yaml (300m per
tier pod) through the chart's operator pod, the router pod and tier pods that really run,
driven with the official OpenAI SDK. Faults under load are in test_real_node_faults.py.
"""

from __future__ import annotations

import time
from typing import Any

from duotone_operator.render import names
from duotone_testbed.cluster import RealCluster, poll
from tests.support.load import SteadyLoad, failures
from tests.support.real_node import (
    EFFICIENT_REQUEST,
    READY_TIMEOUT_S,
    deploy,
    generate,
    is_ready,
    small_imd,
    tier_pods,
    wait_answered,
)


def test_a_pod_enters_the_pool_only_once_its_model_is_loaded(
    real_cluster: RealCluster, real_namespace: str
) -> None:
    url = deploy(real_cluster, real_namespace, small_imd("ready"))
    before = {p["metadata"]["name"] for p in tier_pods(real_cluster, real_namespace, "ready")}
    real_cluster.apply(small_imd("ready", efficient_min=2), real_namespace)

    def new_pod() -> dict[str, Any] | None:
        for pod in tier_pods(real_cluster, real_namespace, "ready"):
            if pod["metadata"]["name"] not in before and pod.get("status", {}).get("podIP"):
                return pod
        return None

    pod = poll(new_pod, timeout_s=120, what="a new efficient pod with an address")
    ip = pod["status"]["podIP"]
    # Running but loading its model: the readiness probe keeps it out of the EndpointSlice the
    # router's pool follows.
    seen_loading = False
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        # The EndpointSlice first: a pod not Ready after it was read was not Ready before.
        endpoints = real_cluster.ready_endpoints(real_namespace, "ready", "efficient")
        pod = real_cluster.get("pod", pod["metadata"]["name"], "-n", real_namespace)
        if is_ready(pod):
            break
        assert ip not in endpoints, "a pod that is not Ready is in the router's pool"
        seen_loading = seen_loading or pod["status"].get("phase") == "Running"
        time.sleep(0.5)
    assert seen_loading, "the pod was never seen running before Ready (nothing was checked)"
    poll(
        lambda: ip in real_cluster.ready_endpoints(real_namespace, "ready", "efficient"),
        timeout_s=60,
        what="the Ready pod in the EndpointSlice",
    )
    assert generate(url, extra_body={"tier": "efficient"}).startswith(b"\x89PNG")


def test_rolling_update_under_steady_load_fails_no_request(
    real_cluster: RealCluster, real_namespace: str
) -> None:
    manifest = small_imd("rolling")
    url = deploy(real_cluster, real_namespace, manifest)
    before = {p["metadata"]["name"] for p in tier_pods(real_cluster, real_namespace, "rolling")}
    with SteadyLoad(url, clients=6, arguments=EFFICIENT_REQUEST) as load:
        wait_answered(load, 20)
        manifest["spec"]["tiers"]["efficient"]["defaults"]["steps"] = 3  # a new tier document
        real_cluster.apply(manifest, real_namespace)

        def rolled() -> bool:
            deployment = real_cluster.get(
                "deployment", names.tier_name("rolling", "efficient"), "-n", real_namespace
            )
            status = deployment.get("status", {})
            done = status.get("observedGeneration") == deployment["metadata"][
                "generation"
            ] and status.get("updatedReplicas") == status.get("replicas") == status.get(
                "readyReplicas"
            )
            pods = tier_pods(real_cluster, real_namespace, "rolling")
            return bool(done and pods) and all(p["metadata"]["name"] not in before for p in pods)

        poll(rolled, timeout_s=READY_TIMEOUT_S, what="the rollout", every_s=1)
        wait_answered(load, 400, timeout_s=300)
        sent = load.stop()
    assert len(sent) >= 400
    assert failures(sent) == [], failures(sent)[:5]


def test_a_request_wakes_a_tier_at_zero(real_cluster: RealCluster, real_namespace: str) -> None:
    manifest = small_imd("wake", efficient_min=0, efficient_max=1)
    manifest["spec"]["autoscaling"] = {
        "scaleToZeroIdleSeconds": 5,
        "scaleDownStabilizationSeconds": 5,
    }
    # A tier that sleeps at zero must let a request wait for a cold start.
    manifest["spec"]["tiers"]["efficient"]["batching"]["requestTimeoutMs"] = 120000
    url = deploy(real_cluster, real_namespace, manifest)
    poll(
        lambda: real_cluster.replicas(real_namespace, "wake", "efficient") == (0, 0),
        timeout_s=180,
        what="the efficient tier at zero",
        every_s=1,
    )
    started = time.monotonic()
    assert generate(url, extra_body={"tier": "efficient"}).startswith(b"\x89PNG")
    assert real_cluster.replicas(real_namespace, "wake", "efficient")[1] >= 1
    print(f"cold start (request to answer): {time.monotonic() - started:.1f} s")
