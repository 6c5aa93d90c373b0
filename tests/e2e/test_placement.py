"""Spreading GPU tier pods over nodes on the kwok GPU pool (2 nodes x 8 GPUs), with the real
kube-scheduler: the default spread is soft, so a pool with one node left still takes every pod;
a hard spread (the IMD's choice) leaves a pod Pending rather than stacking it.

One node is filled first by a stand-in pod holding all 8 of its GPUs, so every tier pod has one
node to go to: the scheduler, not chance, decides whether they may share it.
"""

from __future__ import annotations

from typing import Any

import pytest

from duotone_operator.render import names
from tests.support.builders import imd
from tests.support.cluster import GPU_RESOURCE, Cluster, wait_for

pytestmark = pytest.mark.cluster

FREE_NODE = "gpu-node-0"
FULL_NODE = "gpu-node-1"
GPUS_PER_NODE = 8


def _fill(cluster: Cluster, namespace: str, node: str) -> None:
    """A pod holding every GPU of `node`, bound there (kwok marks it Running)."""
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"fill-{node}"},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists"}],
                "containers": [
                    {
                        "name": "hold",
                        "image": "registry.invalid/hold:1",
                        "resources": {"limits": {GPU_RESOURCE: str(GPUS_PER_NODE)}},
                    }
                ],
            },
        },
        namespace,
    )
    wait_for(
        lambda: (
            cluster.get_json("pod", f"fill-{node}", f"--namespace={namespace}")["spec"].get(
                "nodeName"
            )
            == node
        ),
        timeout_s=60,
        what=f"the stand-in pod bound to {node}",
    )


def _tier_pods(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    selector = ",".join(f"{k}={v}" for k, v in names.tier_selector("sd", "efficient").items())
    pods: list[dict[str, Any]] = cluster.get_json(
        "pods", f"--namespace={namespace}", f"--selector={selector}"
    )["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _gpu_tier(replicas: int, when_unsatisfiable: str | None = None) -> dict[str, Any]:
    manifest = imd("sd").tier("efficient", gpus=2, min=replicas, max=replicas).build()
    if when_unsatisfiable is not None:
        manifest["spec"]["tiers"]["efficient"]["scheduling"] = {
            "topologySpread": [
                {
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": when_unsatisfiable,
                }
            ]
        }
    return manifest


def test_default_soft_spread_still_schedules_every_pod_on_the_one_free_gpu_node(
    cluster: Cluster, namespace: str, run_operator: Any
) -> None:
    cluster.wait_for_free_gpus(2 * GPUS_PER_NODE)
    _fill(cluster, namespace, FULL_NODE)
    run_operator(namespace)
    cluster.create(_gpu_tier(3), namespace)

    def all_on_the_free_node() -> list[dict[str, Any]] | None:
        pods = _tier_pods(cluster, namespace)
        placed = [p for p in pods if p["spec"].get("nodeName") == FREE_NODE]
        return pods if len(pods) == 3 and len(placed) == 3 else None

    pods = wait_for(all_on_the_free_node, timeout_s=90, what="3 tier pods on the free GPU node")
    (spread,) = pods[0]["spec"]["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["whenUnsatisfiable"]) == (
        "kubernetes.io/hostname",
        "ScheduleAnyway",
    )


def test_a_hard_spread_leaves_a_pod_pending_rather_than_stacking_it(
    cluster: Cluster, namespace: str, run_operator: Any
) -> None:
    cluster.wait_for_free_gpus(2 * GPUS_PER_NODE)
    _fill(cluster, namespace, FULL_NODE)
    run_operator(namespace)
    cluster.create(_gpu_tier(2, "DoNotSchedule"), namespace)

    def one_placed_one_refused() -> str | None:
        pods = _tier_pods(cluster, namespace)
        placed = [p for p in pods if p["spec"].get("nodeName")]
        refused = [
            c.get("message", "")
            for p in pods
            for c in p["status"].get("conditions", [])
            if c["type"] == "PodScheduled" and c["status"] == "False"
        ]
        if len(pods) == 2 and len(placed) == 1 and refused:
            return str(refused[0])
        return None

    message = wait_for(one_placed_one_refused, timeout_s=90, what="one pod placed, one Pending")
    assert "topology spread constraints" in message, message
