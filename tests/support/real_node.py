"""Pytest plugin: the test bed with its real node, for tests that need pods that really run.

The session fixture ``real_cluster`` starts the control plane with the real node
(``hack/cluster-up.sh --real-node`` into a temporary directory; images are built and loaded the
first time, cached by content after that), installs the Helm chart (the operator runs as a pod
from its image, under the chart's RBAC), and at the end stops everything and checks that no
process, mount, bridge, iptables chain or cgroup of the test bed is left on the host
(``hack/real-node.sh check``). ``real_namespace`` gives a test a namespace and, afterwards,
removes it and waits until its pods are gone, so the next test has the node's CPU.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from duotone_operator.render import names
from duotone_operator.render.objects import DEFAULT_ROUTER_IMAGE
from duotone_testbed.cluster import RealCluster, poll
from tests.support.load import SteadyLoad

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "tiny-cpu.yaml"
# The first run builds the node's binaries and the images (tens of minutes on 2 cores).
REAL_CLUSTER_UP_TIMEOUT_S = 3600


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    cluster_dir = tmp_path_factory.mktemp("real-cluster")
    try:
        cluster = RealCluster.up(REPO_ROOT, cluster_dir, timeout_s=REAL_CLUSTER_UP_TIMEOUT_S)
        cluster.install_operator()
    except BaseException:
        _down(cluster_dir)
        raise
    yield cluster
    _down(cluster_dir)
    check = subprocess.run(
        [str(REPO_ROOT / "hack" / "real-node.sh"), "check", "--node"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, f"the test bed left state on the host:\n{check.stderr}"


def _down(cluster_dir: Path) -> None:
    subprocess.run(
        [str(REPO_ROOT / "hack" / "cluster-down.sh")],
        env={**os.environ, "DUOTONE_CLUSTER_DIR": str(cluster_dir)},
        timeout=300,
        check=False,
    )


@contextlib.contextmanager
def scratch_namespace(cluster: RealCluster, hint: str) -> Iterator[str]:
    """A new namespace; afterwards its IMDs and pods are removed and their end awaited, so the
    next test has the node's CPU."""
    name = f"rn-{hint.replace('_', '-').strip('-').lower()[:24].strip('-')}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "imd", "--all", "-n", name, "--wait=false")
        cluster.kubectl(
            "delete", "pods", "--all", "-n", name, "--grace-period=0", "--force", "--wait=false"
        )
        cluster.kubectl("delete", "namespace", name, "--wait=false")
        poll(
            lambda: (
                not cluster.kubectl(
                    "get", "pods", "-n", name, "-o", "name", "--ignore-not-found"
                ).strip()
            ),
            timeout_s=120,
            what=f"the pods of namespace {name} to be gone",
        )


@pytest.fixture
def real_namespace(real_cluster: RealCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with scratch_namespace(real_cluster, request.node.name.removeprefix("test_")) as name:
        yield name


@pytest.fixture(scope="module")
def real_module_namespace(
    real_cluster: RealCluster, request: pytest.FixtureRequest
) -> Iterator[str]:
    """One namespace for every test of a module (tests that share one deployment)."""
    with scratch_namespace(real_cluster, request.module.__name__.rsplit(".", 1)[-1]) as name:
        yield name


def tiny_imd(name: str, **overrides: Any) -> dict[str, Any]:
    """examples/tiny-cpu.yaml (what `make demo` runs) renamed, with top-level spec overrides."""
    manifest: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"]["name"] = name
    manifest["spec"].update(overrides)
    return manifest


READY_TIMEOUT_S = 420
EFFICIENT_REQUEST = {"prompt": "steady", "extra_body": {"tier": "efficient", "steps": 1}}
"""SDK arguments of a light request named to the efficient tier (one step: more requests per
second from the same CPU, so a test reaches its request count sooner)."""


def small_imd(name: str, *, efficient_min: int = 1, efficient_max: int = 2) -> dict[str, Any]:
    """tiny_imd with 300m per tier pod, so a surge pod fits beside the others on 2 cores."""
    manifest = tiny_imd(name)
    for tier in manifest["spec"]["tiers"].values():
        tier["resources"]["cpu"] = "300m"
    manifest["spec"]["tiers"]["efficient"]["replicas"] = {
        "min": efficient_min,
        "max": efficient_max,
    }
    return manifest


def deploy(cluster: RealCluster, namespace: str, manifest: dict[str, Any]) -> str:
    """Apply an IMD, wait for Ready; the router Service's URL."""
    cluster.apply(manifest, namespace)
    name = manifest["metadata"]["name"]
    poll(
        lambda: cluster.imd_condition(namespace, name) == "True",
        timeout_s=READY_TIMEOUT_S,
        what=f"imd/{name} Ready",
        every_s=1,
    )
    return cluster.router_url(namespace, name)


def tier_pods(
    cluster: RealCluster, namespace: str, imd: str, tier: str = "efficient"
) -> list[dict[str, Any]]:
    """The tier's pods that are not being deleted."""
    selector = f"app.kubernetes.io/instance={imd},{names.TIER_LABEL}={tier}"
    return [
        p for p in cluster.pods(namespace, selector) if not p["metadata"].get("deletionTimestamp")
    ]


def is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def all_ready(cluster: RealCluster, namespace: str, imd: str, count: int) -> None:
    poll(
        lambda: (
            sum(is_ready(p) for p in tier_pods(cluster, namespace, imd)) >= count
            and len(tier_pods(cluster, namespace, imd)) == count
        ),
        timeout_s=READY_TIMEOUT_S,
        what=f"{count} Ready efficient pods of {imd}",
        every_s=1,
    )


def wait_answered(load: SteadyLoad, count: int, timeout_s: float = 120) -> None:
    poll(lambda: load.count() >= count, timeout_s=timeout_s, what=f"{count} requests answered")


def generate(url: str, **arguments: Any) -> bytes:
    """One image through the official SDK; its PNG bytes."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="test", max_retries=0, timeout=180)
    result = client.images.generate(prompt="a kite", response_format="b64_json", **arguments)
    client.close()
    return base64.b64decode(result.data[0].b64_json or "") if result.data else b""


PROBE_IMAGE = DEFAULT_ROUTER_IMAGE
"""Probe pods run the router's image: the real node always holds it, and it has python3."""

_LISTEN = """
import socket, sys, threading
def serve(port):
    server = socket.create_server(("0.0.0.0", port))
    while True:
        server.accept()[0].close()
for port in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(port),)).start()
"""

_CONNECT = """
import socket, sys
timeout = float(sys.argv[1])
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        print(target, "open")
    except OSError as error:
        print(target, "closed", error)
"""


def probe_pod(
    name: str, labels: Mapping[str, str] | None = None, *, listen: Sequence[int] = ()
) -> dict[str, Any]:
    """A pod on the real node that sleeps, or that accepts (and closes) TCP connections on the
    `listen` ports: a stand-in peer or server for network tests."""
    command = ["python3", "-c", _LISTEN, *map(str, listen)] if listen else ["sleep", "3600"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {
            "nodeSelector": {"duotone.io/real-node": "true"},
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "probe",
                    "image": PROBE_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                }
            ],
        },
    }


def start_pods(cluster: RealCluster, namespace: str, *manifests: dict[str, Any]) -> dict[str, str]:
    """Apply pods, wait until each is Ready; their addresses by name."""
    for manifest in manifests:
        cluster.apply(manifest, namespace)

    def addresses() -> dict[str, str] | None:
        pods = [cluster.get("pod", m["metadata"]["name"], "-n", namespace) for m in manifests]
        if not all(is_ready(p) and p["status"].get("podIP") for p in pods):
            return None
        return {p["metadata"]["name"]: p["status"]["podIP"] for p in pods}

    return poll(addresses, timeout_s=120, what="the probe pods Ready", every_s=1)


def open_ports(
    cluster: RealCluster,
    namespace: str,
    pod: str,
    targets: Sequence[tuple[str, int]],
    *,
    connect_timeout_s: float = 2.0,
) -> set[tuple[str, int]]:
    """The `targets` (address, port) that accept a TCP connection from inside `pod` within the
    timeout (refused, reset or unanswered: closed)."""
    output = cluster.exec(
        namespace,
        pod,
        "python3",
        "-c",
        _CONNECT,
        str(connect_timeout_s),
        *(f"{host}:{port}" for host, port in targets),
    )
    opened: set[tuple[str, int]] = set()
    for line in output.splitlines():
        target, _, verdict = line.partition(" ")
        if verdict.startswith("open"):
            host, port = target.rsplit(":", 1)
            opened.add((host, int(port)))
    return opened
