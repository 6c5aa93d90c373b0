"""The local control plane is a real one: scheduler, garbage collector, RBAC and kubectl work."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import (
    GPU_NODE_SELECTOR,
    GPU_RESOURCE,
    GPU_TOLERATION,
    REPO_ROOT,
    Cluster,
    wait_for,
)

pytestmark = pytest.mark.cluster

GPUS_PER_NODE = 8
GPU_NODES = 2


def _kube_version() -> str:
    for line in (REPO_ROOT / "hack" / "versions.env").read_text().splitlines():
        if line.startswith("KUBE_VERSION="):
            return line.partition("=")[2].strip()
    raise AssertionError("KUBE_VERSION missing from hack/versions.env")


def _gpu_deployment(name: str, replicas: int, gpus_per_pod: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "tolerations": [GPU_TOLERATION],
                    "nodeSelector": {"nvidia.com/gpu.present": "true"},
                    "containers": [
                        {
                            "name": "model",
                            "image": "registry.invalid/duotone/triton:test",
                            "resources": {"limits": {GPU_RESOURCE: str(gpus_per_pod)}},
                        }
                    ],
                },
            },
        },
    }


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in obj.get("status", {}).get("conditions", []):
        if condition["type"] == kind:
            found: dict[str, Any] = condition
            return found
    return None


def _running_and_ready(pod: dict[str, Any]) -> bool:
    ready = _condition(pod, "Ready")
    return (
        pod["status"].get("phase") == "Running" and ready is not None and ready["status"] == "True"
    )


def _unschedulable(pod: dict[str, Any]) -> bool:
    scheduled = _condition(pod, "PodScheduled")
    return scheduled is not None and scheduled.get("reason") == "Unschedulable"


def test_kubectl_talks_to_the_pinned_kubernetes_version(cluster: Cluster) -> None:
    version = cluster.kubectl("version", "--output=json").stdout
    assert f'"gitVersion": "v{_kube_version()}"' in version

    nodes = cluster.get_json("nodes", f"--selector={GPU_NODE_SELECTOR}")["items"]
    assert len(nodes) == GPU_NODES
    for node in nodes:
        assert node["status"]["allocatable"][GPU_RESOURCE] == str(GPUS_PER_NODE)
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        assert (_condition(node, "Ready") or {}).get("status") == "True"


def test_gpu_deployment_is_scheduled_onto_gpu_nodes_and_its_pods_become_ready(
    cluster: Cluster, namespace: str
) -> None:
    cluster.wait_for_free_gpus(2 * 4)
    cluster.create(_gpu_deployment("sd", replicas=2, gpus_per_pod=4), namespace)

    def available() -> bool:
        status = cluster.get_json("deployment/sd", f"--namespace={namespace}")["status"]
        return bool(status.get("availableReplicas") == 2)

    wait_for(available, timeout_s=60, what="Deployment sd to have 2 available replicas")

    pods = cluster.get_json("pods", f"--namespace={namespace}", "--selector=app=sd")["items"]
    gpu_nodes = {
        n["metadata"]["name"]
        for n in cluster.get_json("nodes", f"--selector={GPU_NODE_SELECTOR}")["items"]
    }
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["nodeName"] in gpu_nodes
        assert _running_and_ready(pod)


def test_pods_beyond_gpu_capacity_stay_pending(cluster: Cluster, namespace: str) -> None:
    # 3 pods x 8 GPUs against 2 nodes x 8 GPUs: the scheduler places two and refuses the third.
    cluster.wait_for_free_gpus(GPU_NODES * GPUS_PER_NODE)
    cluster.create(_gpu_deployment("big", GPU_NODES + 1, GPUS_PER_NODE), namespace)

    def settled() -> list[dict[str, Any]] | None:
        pods: list[dict[str, Any]] = cluster.get_json(
            "pods", f"--namespace={namespace}", "--selector=app=big"
        )["items"]
        running = [p for p in pods if _running_and_ready(p)]
        refused = [p for p in pods if _unschedulable(p)]
        return pods if len(running) == GPU_NODES and len(refused) == 1 else None

    pods = wait_for(settled, timeout_s=60, what="2 pods Running and 1 refused by the scheduler")

    assert len(pods) == GPU_NODES + 1
    assert len({p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName")}) == GPU_NODES
    pending = [p for p in pods if p["status"]["phase"] == "Pending"]
    assert len(pending) == 1
    assert not pending[0]["spec"].get("nodeName")
    message = (_condition(pending[0], "PodScheduled") or {}).get("message", "")
    assert f"Insufficient {GPU_RESOURCE}" in message


def test_deleting_an_owner_deletes_owned_objects(cluster: Cluster, namespace: str) -> None:
    owner = cluster.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}}, namespace
    )
    reference = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
    }
    for kind in ("ConfigMap", "Secret"):
        cluster.create(
            {
                "apiVersion": "v1",
                "kind": kind,
                "metadata": {"name": "owned", "ownerReferences": [reference]},
            },
            namespace,
        )

    cluster.kubectl("delete", "configmap/owner", f"--namespace={namespace}")

    def owned_gone() -> bool:
        left = cluster.get_json("configmaps,secrets", f"--namespace={namespace}")["items"]
        return not any(o["metadata"]["name"] == "owned" for o in left)

    wait_for(owned_gone, timeout_s=60, what="the garbage collector to delete the owned objects")


def test_service_account_token_without_a_verb_is_refused(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "serviceaccount", "reader", f"--namespace={namespace}")
    cluster.kubectl(
        "create", "role", "configmap-reader", "--verb=get,list", "--resource=configmaps",
        f"--namespace={namespace}",
    )  # fmt: skip
    cluster.kubectl(
        "create", "rolebinding", "reader", "--role=configmap-reader",
        f"--serviceaccount={namespace}:reader", f"--namespace={namespace}",
    )  # fmt: skip
    token = cluster.service_account_token(namespace, "reader")

    with cluster.api_client(token=token) as api:
        core_as_reader = client.CoreV1Api(api)
        # The granted verb works (the authorizer sees a new binding within moments).
        wait_for(
            lambda: _allowed(lambda: core_as_reader.list_namespaced_config_map(namespace)),
            timeout_s=30,
            what="the Role to take effect",
        )
        with pytest.raises(ApiException) as refused:
            core_as_reader.create_namespaced_config_map(
                namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope"))
            )
        assert refused.value.status == 403
        message = json.loads(refused.value.body or "{}").get("message", "")
        assert (
            f'User "system:serviceaccount:{namespace}:reader" cannot create resource '
            '"configmaps"' in message
        )
        with pytest.raises(ApiException) as other_namespace:
            core_as_reader.list_namespaced_config_map("default")
        assert other_namespace.value.status == 403

    # kubectl impersonating the ServiceAccount gets the same answers from the authorizer.
    as_reader = f"--as=system:serviceaccount:{namespace}:reader"
    can_list = cluster.kubectl("auth", "can-i", "list", "configmaps", "-n", namespace, as_reader)
    assert can_list.stdout.strip() == "yes"
    can_delete = cluster.kubectl(
        "auth", "can-i", "delete", "configmaps", "-n", namespace, as_reader, check=False
    )
    assert can_delete.stdout.strip() == "no"


def _allowed(call: Callable[[], object]) -> bool:
    try:
        call()
    except ApiException as error:
        if error.status == 403:
            return False
        raise
    return True
