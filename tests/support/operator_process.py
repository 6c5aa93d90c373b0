"""Pytest fixtures: the CRD installed, and the real operator running under its own RBAC.

The operator runs as a subprocess (`python -m duotone_operator`) with a kubeconfig that holds
only a ServiceAccount token bound to `charts/duotone/files/operator-rbac-rules.yaml`, so every
test that passes also proves those rules are enough. Those are the cluster-wide rules, with no
Secret read; a test that needs the operator to read Secrets grants
`charts/duotone/files/operator-secret-rules.yaml` in its own namespace (`grant_secret_reads`),
as a namespaced install does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from duotone_runtime.launcher import free_port
from duotone_testbed.local import stop_process
from tests.support.cluster import Cluster, wait_for
from tests.support.manifests import CRD_PATH, ROOT

RBAC_RULES = ROOT / "charts" / "duotone" / "files" / "operator-rbac-rules.yaml"
SECRET_RULES = ROOT / "charts" / "duotone" / "files" / "operator-secret-rules.yaml"
OPERATOR_NAMESPACE = "duotone-system"
OPERATOR_ACCOUNT = "duotone-operator"


def apply(cluster: Cluster, manifest: dict[str, Any], namespace: str | None = None) -> None:
    args = ["apply", "--server-side", "--force-conflicts", "--filename=-"]
    if namespace:
        args.append(f"--namespace={namespace}")
    cluster.kubectl(*args, stdin=json.dumps(manifest))


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> None:
    """The generated CRD from crds/, installed and Established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", f"--filename={CRD_PATH}")

    def established() -> bool:
        crd = cluster.get_json("crd", "imagemodeldeployments.duotone.io")
        conditions = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for(established, timeout_s=60, what="the CRD to be Established")


@pytest.fixture(scope="session")
def operator_kubeconfig(
    cluster: Cluster, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount, and nothing else."""
    rules = yaml.safe_load(RBAC_RULES.read_text())
    for manifest in (
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": OPERATOR_ACCOUNT, "namespace": OPERATOR_NAMESPACE},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": OPERATOR_ACCOUNT},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": OPERATOR_ACCOUNT},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": OPERATOR_ACCOUNT,
            },
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": OPERATOR_ACCOUNT,
                    "namespace": OPERATOR_NAMESPACE,
                }
            ],
        },
    ):
        apply(cluster, manifest)
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    return token_kubeconfig(cluster, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT, path)


def grant_role(cluster: Cluster, namespace: str, name: str, rules: list[dict[str, Any]]) -> None:
    """A Role with `rules` in `namespace`, bound to the operator's ServiceAccount."""
    apply(
        cluster,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": name, "namespace": namespace},
            "rules": rules,
        },
    )
    apply(
        cluster,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": OPERATOR_ACCOUNT,
                    "namespace": OPERATOR_NAMESPACE,
                }
            ],
        },
    )


def grant_secret_reads(cluster: Cluster, namespace: str) -> None:
    """Bind the operator's ServiceAccount to the Secret rules in `namespace` alone (what the
    chart's Role grants in each watched namespace)."""
    grant_role(
        cluster, namespace, f"{OPERATOR_ACCOUNT}-secrets", yaml.safe_load(SECRET_RULES.read_text())
    )

    def granted() -> bool:
        result = cluster.kubectl(
            "auth",
            "can-i",
            "get",
            "secrets",
            f"--namespace={namespace}",
            f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}",
            check=False,
        )
        return result.stdout.strip() == "yes"

    wait_for(granted, timeout_s=30, what=f"the operator's Secret reads in {namespace}")


def token_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> Path:
    """Write a kubeconfig that holds nothing but a token of this ServiceAccount (24 h)."""
    token = cluster.service_account_token(namespace, account, 24 * 3600)
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": account}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


@dataclass
class OperatorProcess:
    """One running operator; its log is kept for failure messages."""

    process: subprocess.Popen[bytes]
    log_path: Path
    health_port: int
    metrics_port: int
    args: list[str] = field(default_factory=list)

    def log(self, last: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-last:])

    def stop(self, *, kill: bool = False) -> None:
        stop_process(self.process, timeout_s=30, first=signal.SIGKILL if kill else signal.SIGTERM)


def start_operator(
    kubeconfig: Path,
    log_path: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> OperatorProcess:
    """`python -m duotone_operator` as this kubeconfig, on free health and metrics ports, with
    a text log; `env` adds to (and overrides) this process's environment."""
    health, metrics = free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "duotone_operator",
        *args,
        f"--kubeconfig={kubeconfig}",
        f"--health-port={health}",
        f"--metrics-port={metrics}",
        "--log-format=text",
    ]
    environment = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    environment.update(env or {})
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=environment, cwd=ROOT
        )
    return OperatorProcess(process, log_path, health, metrics, argv)


@pytest.fixture
def run_operator(
    operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start the operator watching the given namespaces; every one started is stopped after."""
    started: list[OperatorProcess] = []

    def start(*namespaces: str, extra: tuple[str, ...] = ()) -> OperatorProcess:
        operator = start_operator(
            operator_kubeconfig,
            tmp_path / f"operator-{len(started)}.log",
            (
                *(f"--namespace={n}" for n in namespaces),
                "--retry-base-seconds=1",
                "--retry-max-seconds=4",
                *extra,
            ),
        )
        started.append(operator)
        return operator

    yield start
    for operator in started:
        operator.stop()


def imd_condition(cluster: Cluster, namespace: str, name: str, kind: str = "Ready") -> Any:
    """The condition of one IMD, or None."""
    imd = cluster.get_json("imd", name, f"--namespace={namespace}")
    for condition in (imd.get("status") or {}).get("conditions") or []:
        if condition["type"] == kind:
            return condition
    return None


def wait_ready(
    cluster: Cluster, namespace: str, name: str, operator: OperatorProcess, timeout_s: float = 90
) -> dict[str, Any]:
    """Wait until the IMD reports Ready=True for its current generation; return it."""

    def ready() -> dict[str, Any] | None:
        imd: dict[str, Any] = cluster.get_json("imd", name, f"--namespace={namespace}")
        status = imd.get("status") or {}
        current = status.get("observedGeneration") == imd["metadata"]["generation"]
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        return imd if current and conditions.get("Ready") == "True" else None

    try:
        return wait_for(ready, timeout_s=timeout_s, what=f"{namespace}/{name} to be Ready")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{operator.log()}") from None
