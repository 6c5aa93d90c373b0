"""The local Kubernetes test bed with its real node, driven from Python (the demo, e2e tests).

`RealCluster.up(repo, cluster_dir)` runs `hack/cluster-up.sh --real-node` (control plane, fake
GPU nodes, one real kubelet node with the product's images loaded) and returns a handle that
runs kubectl and helm against it. Everything goes through the same command-line tools a user
types, with the kubeconfig always explicit, so nothing here can touch another cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from duotone_contracts.api.v1alpha1 import TierName
from duotone_contracts.services import ROUTER_HTTP, ROUTER_METRICS
from duotone_operator.render import names

T = TypeVar("T")
Manifest = dict[str, Any]

REAL_NODE_LABEL = "duotone.io/real-node=true"
OPERATOR_RELEASE = "duotone"
OPERATOR_NAMESPACE = "duotone-system"
TESTBED_CHART_VALUES: dict[str, Any] = {"image.pullPolicy": "IfNotPresent"}
"""Chart values every test-bed install starts from: its images are preloaded, never pulled."""
OPERATOR_SELECTOR = "app.kubernetes.io/name=duotone-operator"
"""The chart's selector labels of the operator pod (charts/duotone/templates/_helpers.tpl)."""


class CommandError(RuntimeError):
    """kubectl, helm or a hack script exited with a non-zero status."""


def poll(probe: Callable[[], T | None], *, timeout_s: float, what: str, every_s: float = 0.5) -> T:
    """`probe()` until it returns something other than None/False; TimeoutError after a deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def _run(args: Sequence[str], *, stdin: str | None = None, timeout_s: float = 180) -> str:
    result = subprocess.run(
        list(args), input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if result.returncode != 0:
        raise CommandError(
            f"{' '.join(args[:4])} ... exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    return result.stdout


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (values shell-quoted), as hack/build-binaries.sh and real-node.sh write."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = " ".join(shlex.split(value))
    return values


@dataclass(frozen=True)
class RealCluster:
    """A running local cluster with a real node: kubectl and helm against its kubeconfig."""

    repo: Path
    cluster_dir: Path
    kubectl_binary: str
    helm_binary: str
    ctr_binary: str
    containerd_socket: str

    @property
    def kubeconfig(self) -> Path:
        return self.cluster_dir / "kubeconfig"

    @classmethod
    def up(cls, repo: Path, cluster_dir: Path, *, timeout_s: float = 3600) -> RealCluster:
        """Start (or reuse) the test bed; the first run builds binaries and images."""
        env = {**os.environ, "DUOTONE_CLUSTER_DIR": str(cluster_dir)}
        subprocess.run(
            [str(repo / "hack" / "cluster-up.sh"), "--real-node"],
            env=env,
            stdout=subprocess.DEVNULL,
            timeout=timeout_s,
            check=True,
        )
        helm = _run([str(repo / "hack" / "install-tools.sh"), "--print-helm"]).strip()
        if not helm:
            raise CommandError("helm is not built: run hack/install-tools.sh (make tools)")
        binaries = _env_file(cluster_dir / "binaries.env")
        node = _env_file(cluster_dir / "node" / "node.env")
        return cls(
            repo,
            cluster_dir,
            binaries["DUOTONE_KUBECTL"],
            helm,
            binaries["DUOTONE_CTR"],
            node["CONTAINERD_SOCKET"],
        )

    def down(self) -> None:
        """Stop the control plane and the node, undoing every change to the host."""
        env = {**os.environ, "DUOTONE_CLUSTER_DIR": str(self.cluster_dir)}
        subprocess.run(
            [str(self.repo / "hack" / "cluster-down.sh")], env=env, timeout=300, check=True
        )

    def kubectl(self, *args: str, stdin: str | None = None, timeout_s: float = 180) -> str:
        return _run(
            [self.kubectl_binary, "--kubeconfig", str(self.kubeconfig), *args],
            stdin=stdin,
            timeout_s=timeout_s,
        )

    def get(self, *args: str) -> Any:
        """`kubectl get ... -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply(self, manifest: Mapping[str, Any], namespace: str) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(manifest))

    def ensure_namespace(self, namespace: str) -> None:
        if not self.kubectl("get", "namespace", namespace, "--ignore-not-found", "-o", "name"):
            self.kubectl("create", "namespace", namespace)

    def helm(self, *args: str, timeout_s: float = 600) -> str:
        return _run(
            [self.helm_binary, "--kubeconfig", str(self.kubeconfig), *args], timeout_s=timeout_s
        )

    def install_operator(self, values: Mapping[str, Any] | None = None) -> None:
        """`helm upgrade --install` of charts/duotone; waits for the operator pod to be Ready.
        The test bed's images are loaded onto its node (there is no registry), so the operator
        image is never pulled: `image.pullPolicy` is IfNotPresent unless `values` say else."""
        flags: list[str] = []
        for key, value in {**TESTBED_CHART_VALUES, **(values or {})}.items():
            flags += ["--set-json", f"{key}={json.dumps(value)}"]
        self.helm(
            "upgrade",
            "--install",
            OPERATOR_RELEASE,
            str(self.repo / "charts" / "duotone"),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout",
            "5m",
            *flags,
        )

    # ------------------------------------------------------------------ what the operator made

    def imd_condition(self, namespace: str, imd: str, kind: str = "Ready") -> str | None:
        """The status of the IMD's condition `kind` ("True", "False"), None if absent."""
        obj = self.get("imd", imd, "-n", namespace)
        for condition in obj.get("status", {}).get("conditions", []):
            if condition.get("type") == kind:
                return str(condition.get("status"))
        return None

    def router_url(self, namespace: str, imd: str) -> str:
        """The router Service's virtual IP (kube-proxy on the real node routes it)."""
        service = self.get("service", names.router_name(imd), "-n", namespace)
        return f"http://{service['spec']['clusterIP']}:{ROUTER_HTTP.number}"

    def router_metrics_url(self, namespace: str, imd: str) -> str:
        """/metrics of a router pod, through the router Service's metrics port."""
        service = self.get("service", names.router_name(imd), "-n", namespace)
        return f"http://{service['spec']['clusterIP']}:{ROUTER_METRICS.number}/metrics"

    def ready_endpoints(self, namespace: str, imd: str, tier: TierName) -> list[str]:
        """Pod IPs the tier's EndpointSlices list as ready (what the router's pool follows)."""
        slices = self.get(
            "endpointslices",
            "-n",
            namespace,
            "-l",
            f"kubernetes.io/service-name={names.tier_name(imd, tier)}",
        )
        return [
            address
            for item in slices["items"]
            for endpoint in item.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready")
            for address in endpoint.get("addresses", [])
        ]

    def replicas(self, namespace: str, imd: str, tier: TierName) -> tuple[int, int]:
        """(desired, ready) replicas of a tier's Deployment."""
        deployment = self.get("deployment", names.tier_name(imd, tier), "-n", namespace)
        return (
            int(deployment["spec"].get("replicas", 0)),
            int(deployment.get("status", {}).get("readyReplicas", 0)),
        )

    def events(self, namespace: str, involved: str) -> list[Manifest]:
        """Events about one object, oldest first."""
        items: list[Manifest] = self.get(
            "events", "-n", namespace, "--field-selector", f"involvedObject.name={involved}"
        )["items"]
        return sorted(items, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime")))

    def operator_pods(self) -> list[Manifest]:
        """The chart's operator pods that are not being deleted."""
        return [
            p
            for p in self.pods(OPERATOR_NAMESPACE, OPERATOR_SELECTOR)
            if not p["metadata"].get("deletionTimestamp")
        ]

    def pods(self, namespace: str, selector: str) -> list[Manifest]:
        pods: list[Manifest] = self.get("pods", "-n", namespace, "-l", selector)["items"]
        return pods

    def ctr(self, *args: str) -> str:
        """containerd's own client on the real node (Kubernetes' namespace of containers)."""
        return _run([self.ctr_binary, "--address", self.containerd_socket, "-n", "k8s.io", *args])

    def exec(self, namespace: str, pod: str, *command: str) -> str:
        return self.kubectl("exec", "-n", namespace, pod, "--", *command)
