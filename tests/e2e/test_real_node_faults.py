"""Faults under load on the real node, all against one deployment (examples/tiny-cpu.yaml at
300m per pod, 2 efficient pods), through the chart's operator pod and the real router pod:
a pod deleted gracefully, a container SIGKILLed, the operator pod deleted. Before each test every
efficient pod is Ready again. The security test reads each pod's uid and root mount from inside.

Load is a few client threads of the official OpenAI SDK sending one request after another
(tests/support/load.py); the assertions are on answers, never on timings.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from duotone_contracts.metrics import RECONCILES
from duotone_operator.adapters.lease import LEASE_NAME
from duotone_operator.render import names
from duotone_testbed.cluster import OPERATOR_NAMESPACE, CommandError, RealCluster, poll
from tests.support.load import SteadyLoad, failures
from tests.support.real_node import (
    EFFICIENT_REQUEST,
    READY_TIMEOUT_S,
    all_ready,
    deploy,
    generate,
    is_ready,
    small_imd,
    tier_pods,
    wait_answered,
)

IMD = "loop"
EFFICIENT_PODS = 2


@dataclass(frozen=True)
class Deployment:
    cluster: RealCluster
    namespace: str
    url: str


@pytest.fixture(scope="module")
def loop(real_cluster: RealCluster, real_module_namespace: str) -> Deployment:
    url = deploy(real_cluster, real_module_namespace, small_imd(IMD, efficient_min=EFFICIENT_PODS))
    return Deployment(real_cluster, real_module_namespace, url)


@pytest.fixture
def settled(loop: Deployment) -> Deployment:
    all_ready(loop.cluster, loop.namespace, IMD, EFFICIENT_PODS)
    return loop


def test_pods_run_restricted_and_serve(settled: Deployment) -> None:
    """Non-root uid, read-only root filesystem, no privilege escalation, read from inside each
    pod; the operator pod reconciling this IMD is itself the proof that it starts as uid 10001
    without a passwd entry and authenticates with its in-cluster token."""
    cluster, namespace = settled.cluster, settled.namespace
    assert generate(settled.url).startswith(b"\x89PNG")
    router = cluster.pods(namespace, f"app.kubernetes.io/component={names.COMPONENT_ROUTER}")
    pods = [
        (OPERATOR_NAMESPACE, cluster.operator_pods()[0]["metadata"]["name"]),
        (namespace, tier_pods(cluster, namespace, IMD)[0]["metadata"]["name"]),
        (namespace, router[0]["metadata"]["name"]),
    ]
    for pod_namespace, pod in pods:
        assert cluster.exec(pod_namespace, pod, "id", "-u").strip() != "0", pod
        mounts = cluster.exec(pod_namespace, pod, "cat", "/proc/self/mountinfo").splitlines()
        root = [line.split() for line in mounts if line.split()[4] == "/"]
        assert root, (pod, "no root mount")
        assert "ro" in root[0][5].split(","), (pod, root)
        status = cluster.exec(pod_namespace, pod, "cat", "/proc/self/status")
        assert "NoNewPrivs:\t1" in status, pod
        with pytest.raises(CommandError, match="Read-only file system"):
            cluster.exec(pod_namespace, pod, "touch", "/written-by-a-test")


def test_graceful_pod_delete_under_load_fails_no_request(settled: Deployment) -> None:
    cluster, namespace = settled.cluster, settled.namespace
    victim = tier_pods(cluster, namespace, IMD)[0]["metadata"]["name"]
    with SteadyLoad(settled.url, clients=3, arguments=EFFICIENT_REQUEST) as load:
        wait_answered(load, 20)
        cluster.kubectl("delete", "pod", victim, "-n", namespace, "--wait=true")
        all_ready(cluster, namespace, IMD, EFFICIENT_PODS)
        wait_answered(load, load.count() + 20)
        sent = load.stop()
    assert failures(sent) == [], failures(sent)[:5]


def test_sigkilled_runtime_container_under_load(settled: Deployment) -> None:
    """At least 99 % answered, and no failure later than 2 s after the kill: the requests in
    flight on the killed pod may fail, nothing sent after it may."""
    cluster, namespace = settled.cluster, settled.namespace
    pod = tier_pods(cluster, namespace, IMD)[0]
    name = pod["metadata"]["name"]
    restarts = pod["status"]["containerStatuses"][0].get("restartCount", 0)
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    with SteadyLoad(settled.url, clients=4, arguments=EFFICIENT_REQUEST) as load:
        wait_answered(load, 20)
        killed_at = time.monotonic()
        cluster.ctr("tasks", "kill", "--signal", "SIGKILL", container_id)

        def restarted() -> bool:
            status = cluster.get("pod", name, "-n", namespace)
            count = status["status"]["containerStatuses"][0].get("restartCount", 0)
            return bool(count > restarts and is_ready(status))

        poll(restarted, timeout_s=READY_TIMEOUT_S, what="the container restarted, Ready", every_s=1)
        # Enough requests that the ones in flight on the killed pod stay within 1 %.
        wait_answered(load, max(load.count() + 20, 400), timeout_s=300)
        sent = load.stop()
    failed = failures(sent)
    late = [s for s in failed if s.ended > killed_at + 2]
    assert late == [], late[:5]
    assert len(failed) * 100 <= len(sent), (len(failed), len(sent), failed[:5])


def test_operator_pod_deleted_while_traffic_flows(settled: Deployment) -> None:
    """The data plane serves on; the restarted operator converges without touching healthy
    children (their specs' generations and the pods stay the same)."""
    cluster, namespace = settled.cluster, settled.namespace
    deployments = [names.tier_name(IMD, "efficient"), names.tier_name(IMD, "flagship")]
    deployments.append(names.router_name(IMD))

    def generations() -> dict[str, int]:
        return {
            d: int(cluster.get("deployment", d, "-n", namespace)["metadata"]["generation"])
            for d in deployments
        }

    def pod_uids() -> set[str]:
        pods = cluster.pods(namespace, f"app.kubernetes.io/instance={IMD}")
        return {p["metadata"]["uid"] for p in pods}

    before, pods_before = generations(), pod_uids()
    operator = poll(lambda: _leader_pod(cluster), timeout_s=60, what="the leading operator pod")
    with SteadyLoad(settled.url, clients=3, arguments=EFFICIENT_REQUEST) as load:
        wait_answered(load, 20)
        cluster.kubectl(
            "delete", "pod", operator["metadata"]["name"], "-n", OPERATOR_NAMESPACE, "--wait=true"
        )
        # The deleted writer released the Lease: the standby leads and resumes every IMD (its
        # own count of successful reconciles is the evidence), and a replacement pod stands by.
        poll(
            lambda: (
                (leader := _leader_pod(cluster)) is not None
                and leader["metadata"]["uid"] != operator["metadata"]["uid"]
                and _successful_reconciles(leader) >= 1
            ),
            timeout_s=120,
            what="a successful reconcile by the new leading operator",
            every_s=1,
        )
        poll(
            lambda: len([p for p in cluster.operator_pods() if is_ready(p)]) == 2,
            timeout_s=180,
            what="the replacement operator pod Ready",
            every_s=1,
        )
        assert cluster.imd_condition(namespace, IMD) == "True"
        wait_answered(load, load.count() + 40)
        sent = load.stop()
    assert failures(sent) == [], failures(sent)[:5]
    assert generations() == before, "the restarted operator changed a healthy child's spec"
    assert pod_uids() == pods_before, "the restarted operator replaced pods"


def _leader_pod(cluster: RealCluster) -> dict[str, Any] | None:
    """The operator pod that holds the Lease (the chart passes the pod name as its identity)."""
    try:
        lease = cluster.get("lease", LEASE_NAME, "-n", OPERATOR_NAMESPACE)
    except CommandError:
        return None
    holder = (lease.get("spec") or {}).get("holderIdentity")
    found = [p for p in cluster.operator_pods() if p["metadata"]["name"] == holder]
    return found[0] if found and is_ready(found[0]) else None


def _successful_reconciles(pod: dict[str, Any]) -> float:
    """duotone_operator_reconciles_total{result="success"} of one operator pod (its metrics port,
    reached on the pod's address from this machine)."""
    url = f"http://{pod['status']['podIP']}:9090/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(RECONCILES.name) and 'result="success"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0
