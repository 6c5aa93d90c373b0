"""The Helm chart in a real API server, with the real Helm CLI: install into a namespace that
enforces Pod Security "restricted", run the operator under the chart's ServiceAccount token
(so the chart's RBAC is proven by the API server), reconcile an example IMD, upgrade with a
changed CRD, uninstall and find nothing left.

The chart owns the cluster-scoped CRD, so this module starts its own control plane (~5 s)
rather than sharing the session's, where the CRD comes from crds/ directly.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import Cluster, KubectlError, control_plane, wait_for
from tests.support.helm import CHART, helm, monitoring_crd, values_args
from tests.support.manifests import CRD_PATH, EXAMPLES_DIR
from tests.support.operator_process import (
    OperatorProcess,
    start_operator,
    token_kubeconfig,
    wait_ready,
)

RELEASE = "duotone"
SYSTEM = "duotone-system"
WORKLOADS = "images"
CRD_NAME = "imagemodeldeployments.duotone.io"
RELEASE_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/managed-by=Helm"
VALUES = {
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "networkPolicy": {"metricsFrom": [{"namespaceSelector": {}}]},
}
NAMESPACED_KINDS = (
    "deployments,services,serviceaccounts,configmaps,networkpolicies,roles,rolebindings,"
    "servicemonitors.monitoring.coreos.com,prometheusrules.monitoring.coreos.com"
)


@pytest.fixture(scope="module")
def helm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with control_plane(tmp_path_factory.mktemp("helm-controlplane"), "duotone-helm") as cluster:
        for name in ("servicemonitors", "prometheusrules"):
            cluster.kubectl("apply", "--server-side", f"--filename={monitoring_crd(name)}")
        for namespace in (SYSTEM, WORKLOADS):
            cluster.kubectl("create", "namespace", namespace)
            # The API server's PodSecurity admission rejects any pod that is not "restricted".
            cluster.kubectl(
                "label",
                "namespace",
                namespace,
                "pod-security.kubernetes.io/enforce=restricted",
                "pod-security.kubernetes.io/enforce-version=latest",
            )
        wait_for(
            lambda: _account_exists(cluster, WORKLOADS, "default"),
            timeout_s=30,
            what="the default ServiceAccount",
        )
        yield cluster


def _account_exists(cluster: Cluster, namespace: str, name: str) -> bool:
    result = cluster.kubectl("get", "serviceaccount", name, f"--namespace={namespace}", check=False)
    return result.returncode == 0


def _helm(cluster: Cluster, *args: str) -> str:
    return helm(*args, kubeconfig=cluster.kubeconfig)


def _install(cluster: Cluster, chart: Path, values: dict[str, Any], workdir: Path) -> str:
    return _helm(
        cluster,
        "upgrade",
        "--install",
        RELEASE,
        str(chart),
        f"--namespace={SYSTEM}",
        *values_args(values, workdir),
        "--wait",
        "--timeout=120s",
    )


def _run_installed_operator(cluster: Cluster, workdir: Path) -> OperatorProcess:
    """The operator as the chart's Deployment configures it (its environment, account and
    Lease), as a local process: kwok's pods run no containers."""
    deployment = cluster.get_json("deployment", RELEASE, f"--namespace={SYSTEM}")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    kubeconfig = token_kubeconfig(
        cluster, SYSTEM, pod["serviceAccountName"], workdir / "kubeconfig"
    )
    return start_operator(
        kubeconfig,
        workdir / "operator.log",
        tuple(container.get("args", [])),
        env={
            e["name"]: _field(e) if "valueFrom" in e else e.get("value", "")
            for e in container["env"]
        },
    )


def _field(variable: dict[str, Any]) -> str:
    """A downward-API variable's value for the local process: the pod's namespace and name."""
    path = variable["valueFrom"]["fieldRef"]["fieldPath"]
    return {"metadata.namespace": SYSTEM, "metadata.name": f"{RELEASE}-local"}[path]


def _release_objects(cluster: Cluster) -> list[str]:
    found = cluster.get_json(
        NAMESPACED_KINDS, f"--namespace={SYSTEM}", f"--selector={RELEASE_SELECTOR}"
    )["items"]
    found += cluster.get_json("clusterroles,clusterrolebindings", f"--selector={RELEASE_SELECTOR}")[
        "items"
    ]
    return [f"{o['kind']}/{o['metadata']['name']}" for o in found]


def _crd(cluster: Cluster) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = cluster.get_json("crd", CRD_NAME)
    except KubectlError as error:
        if "NotFound" in str(error):
            return None
        raise
    return found


def _changed_chart(workdir: Path) -> Path:
    """A copy of the chart whose CRD gains a printer column (a schema change to roll out)."""
    chart = workdir / "chart-next"
    shutil.copytree(CHART, chart)
    path = chart / "files" / "crds" / CRD_PATH.name
    crd = yaml.safe_load(path.read_text())
    for version in crd["spec"]["versions"]:
        version["additionalPrinterColumns"].append(
            {"name": "Routers", "type": "integer", "jsonPath": ".spec.router.replicas"}
        )
    path.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


def test_install_reconcile_upgrade_and_uninstall(helm_cluster: Cluster, tmp_path: Path) -> None:
    cluster = helm_cluster
    _install(cluster, CHART, VALUES, tmp_path)

    # Installed: the pod passed PodSecurity "restricted" admission and became ready.
    deployment = cluster.get_json("deployment", RELEASE, f"--namespace={SYSTEM}")
    assert deployment["status"].get("readyReplicas") == 2, deployment["status"]
    annotations = (_crd(cluster) or {}).get("metadata", {}).get("annotations", {})
    assert annotations["helm.sh/resource-policy"] == "keep"
    assert annotations["meta.helm.sh/release-name"] == RELEASE
    installed = set(_release_objects(cluster))
    assert {
        "ServiceMonitor/duotone",
        "ServiceMonitor/duotone-tiers",
        "ServiceMonitor/duotone-routers",
        "PrometheusRule/duotone",
        "ClusterRole/duotone",
        "NetworkPolicy/duotone",
        "ConfigMap/duotone-dashboards",
    } <= installed, installed

    # The operator under the chart's ServiceAccount reconciles an example IMD; its children's
    # pods (runtime and router) pass "restricted" admission too.
    operator = _run_installed_operator(cluster, tmp_path)
    try:
        example = yaml.safe_load((EXAMPLES_DIR / "tiny-cpu.yaml").read_text())
        cluster.kubectl(
            "apply", f"--namespace={WORKLOADS}", f"--filename={EXAMPLES_DIR / 'tiny-cpu.yaml'}"
        )
        name = example["metadata"]["name"]
        wait_ready(cluster, WORKLOADS, name, operator, timeout_s=120)
        pods = cluster.get_json("pods", f"--namespace={WORKLOADS}")["items"]
        assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods} == {
            "tier",
            "router",
        }

        # Upgrade with a changed CRD: Helm applies it, and the stored IMD survives.
        _install(cluster, _changed_chart(tmp_path), VALUES, tmp_path)
        columns = {
            c["name"]
            for c in (_crd(cluster) or {})["spec"]["versions"][0]["additionalPrinterColumns"]
        }
        assert "Routers" in columns, columns
        printed = cluster.kubectl("get", "imd", name, f"--namespace={WORKLOADS}").stdout
        assert "ROUTERS" in printed.splitlines()[0], printed
        wait_ready(cluster, WORKLOADS, name, operator)
        lease = cluster.get_json("lease", "duotone-operator", f"--namespace={SYSTEM}")
        assert lease["spec"]["holderIdentity"] == f"{RELEASE}-local", "the chart's Lease Role"
        assert not cluster.get_json("imd", name, f"--namespace={WORKLOADS}")["metadata"].get(
            "finalizers"
        ), "the autoscaler (on, as the chart sets it) adds no finalizer"
    finally:
        operator.stop()

    # Uninstall: nothing of the release is left but the CRD it was told to keep.
    _helm(cluster, "uninstall", RELEASE, f"--namespace={SYSTEM}", "--wait", "--timeout=120s")
    wait_for(lambda: not _release_objects(cluster), timeout_s=60, what="release objects gone")
    assert _crd(cluster) is not None
    assert json.loads(_helm(cluster, "list", f"--namespace={SYSTEM}", "--output=json")) == []
    # The kept CRD does not strand IMDs: with no operator left, deleting one completes.
    cluster.kubectl("delete", "imd", name, f"--namespace={WORKLOADS}", "--timeout=30s")
    wait_for(
        lambda: (
            not cluster.get_json(
                "all", f"--namespace={WORKLOADS}", "--selector=app.kubernetes.io/instance=tiny"
            )["items"]
        ),
        timeout_s=60,
        what="the IMD's children to be garbage collected",
    )

    # With crds.keep=false an uninstall removes the CRD too: nothing at all is left.
    _install(cluster, CHART, {**VALUES, "crds": {"keep": False}}, tmp_path)
    _helm(cluster, "uninstall", RELEASE, f"--namespace={SYSTEM}", "--wait", "--timeout=120s")
    wait_for(lambda: _crd(cluster) is None, timeout_s=60, what="the CRD to be deleted")
    assert not _release_objects(cluster)
    secrets = cluster.get_json("secrets", f"--namespace={SYSTEM}", "--selector=owner=helm")
    assert not secrets["items"], "Helm's release records are gone"
