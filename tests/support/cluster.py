"""Pytest plugin: a real local control plane for tests marked ``cluster``.

The session fixture ``cluster`` starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok once per test run (hack/cluster-up.sh into a temporary directory) and
stops them at the end; ``namespace`` gives each test a fresh namespace. With
``DUOTONE_USE_EXISTING_CLUSTER=1`` the fixture uses the cluster of ``make cluster-up`` instead and
leaves it running. Missing binaries are an error, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from duotone_testbed.cluster import poll

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK_DIR = REPO_ROOT / "hack"

# Labels of the fake GPU nodes in hack/kwok/gpu-nodes.yaml: 2 nodes x 8 GPUs.
GPU_NODE_SELECTOR = "duotone.io/fake-gpu-node=true"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {
    "key": GPU_RESOURCE,
    "operator": "Equal",
    "value": "present",
    "effect": "NoSchedule",
}

# Start-up takes ~5 s with cached binaries; the fixture never builds them (too slow to hide).
CLUSTER_UP_TIMEOUT_S = 300
KUBECTL_TIMEOUT_S = 120

T = TypeVar("T")


class ControlPlaneError(RuntimeError):
    """The local control plane could not be found or started."""


class KubectlError(RuntimeError):
    """kubectl exited with a non-zero status."""

    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"kubectl {shlex.join(args)} exited with {result.returncode}:\n{result.stderr.strip()}"
        )
        self.result = result


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.25,
) -> T:
    """Poll ``probe`` until it returns a value that is not None/False, or fail after a deadline
    (the test bed's ``poll``, with this module's default interval)."""
    return poll(probe, timeout_s=timeout_s, what=what, every_s=interval_s)


@dataclass(frozen=True)
class Cluster:
    """A running control plane: its kubeconfig and the binaries that match its version."""

    kubeconfig: Path
    binaries: dict[str, str]

    @property
    def kubectl_binary(self) -> str:
        return self.binaries.get("DUOTONE_KUBECTL", "kubectl")

    def api_client(self, token: str | None = None) -> client.ApiClient:
        """A client built from this cluster's kubeconfig (never from $KUBECONFIG).

        With ``token``, the client authenticates with that bearer token alone (for example a
        ServiceAccount token), not with the admin client certificate.
        """
        configuration = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        if token is not None:
            configuration.cert_file = None
            configuration.key_file = None
            configuration.api_key = {"BearerToken": f"Bearer {token}"}
        return client.ApiClient(configuration)

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        stdin: str | None = None,
        timeout_s: float = KUBECTL_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raise KubectlError on failure when ``check``."""
        argv = [self.kubectl_binary, "--kubeconfig", str(self.kubeconfig), *args]
        result = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        if check and result.returncode != 0:
            raise KubectlError(args, result)
        return result

    def get_json(self, *args: str) -> Any:
        """``kubectl get <args> --output=json``, parsed."""
        return json.loads(self.kubectl("get", *args, "--output=json").stdout)

    def create(self, manifest: dict[str, Any], namespace: str | None = None) -> Any:
        """Create one object from a manifest dict with ``kubectl create``; return it as stored."""
        args = ["create", "--filename=-", "--output=json"]
        if namespace is not None:
            args.append(f"--namespace={namespace}")
        return json.loads(self.kubectl(*args, stdin=json.dumps(manifest)).stdout)

    def service_account_token(
        self, namespace: str, name: str, expiration_seconds: int = 3600
    ) -> str:
        """A ServiceAccount token from the TokenRequest API (what `kubectl create token` does)."""
        args = ["create", "token", name, f"--namespace={namespace}"]
        return self.kubectl(*args, f"--duration={expiration_seconds}s").stdout.strip()

    def wait_for_free_gpus(self, count: int, timeout_s: float = 120) -> None:
        """Wait until ``count`` GPUs are held by no pod (earlier tests' namespaces may still be
        terminating)."""

        def free() -> bool:
            nodes = self.get_json("nodes", f"--selector={GPU_NODE_SELECTOR}")["items"]
            total = sum(int(n["status"]["allocatable"].get(GPU_RESOURCE, "0")) for n in nodes)
            used = 0
            for pod in self.get_json("pods", "--all-namespaces")["items"]:
                if pod["status"].get("phase") in ("Succeeded", "Failed"):
                    continue
                if not pod["spec"].get("nodeName"):
                    continue
                for container in pod["spec"]["containers"]:
                    limits = container.get("resources", {}).get("limits", {})
                    used += int(limits.get(GPU_RESOURCE, "0"))
            return total - used >= count

        wait_for(free, timeout_s=timeout_s, what=f"{count} free {GPU_RESOURCE}")


def _binaries_or_fail(env: dict[str, str]) -> dict[str, str]:
    """The binary paths from hack/build-binaries.sh --check, or a clear error."""
    result = subprocess.run(
        [str(HACK_DIR / "build-binaries.sh"), "--check"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise ControlPlaneError(
            "The control-plane binaries are missing, so tests marked 'cluster' cannot run.\n"
            "Build them once with `hack/build-binaries.sh` (or `make binaries`; several minutes "
            "the first time), or set KUBEBUILDER_ASSETS / DUOTONE_<BINARY> to existing ones.\n"
            + result.stderr.strip()
        )
    return _parse_env_lines(result.stdout)


def _parse_env_lines(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            values[key] = " ".join(shlex.split(value))
    return values


def _run_script(name: str, env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(HACK_DIR / name)],
        capture_output=True,
        text=True,
        env=env,
        timeout=CLUSTER_UP_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise ControlPlaneError(
            f"hack/{name} failed with exit status {result.returncode}:\n{result.stderr[-4000:]}"
        )


def _use_existing_cluster() -> bool:
    return os.environ.get("DUOTONE_USE_EXISTING_CLUSTER", "") not in ("", "0", "false")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "cluster: needs the local control plane (etcd, kube-apiserver, kube-controller-manager, "
        "kube-scheduler, kwok); started once per session, see docs/controlplane.md",
    )


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The local control plane, started once per test run and stopped at its end."""
    env = dict(os.environ)
    # The kubernetes client and kubectl must never fall back to a user's own cluster.
    env.pop("KUBECONFIG", None)
    binaries = _binaries_or_fail(env)

    if _use_existing_cluster():
        cluster_dir = Path(env.get("DUOTONE_CLUSTER_DIR", REPO_ROOT / ".cluster"))
        kubeconfig = cluster_dir / "kubeconfig"
        if not kubeconfig.is_file():
            raise ControlPlaneError(
                f"DUOTONE_USE_EXISTING_CLUSTER is set but {kubeconfig} does not exist; "
                "run `make cluster-up` first"
            )
        existing = Cluster(kubeconfig=kubeconfig, binaries=binaries)
        existing.kubectl("get", "--raw", "/readyz")
        yield existing
        return

    with control_plane(tmp_path_factory.mktemp("controlplane"), "duotone-test") as started:
        yield started


@contextlib.contextmanager
def control_plane(cluster_dir: Path, name: str) -> Iterator[Cluster]:
    """Start a fresh control plane (its own etcd and ports) in ``cluster_dir``; stop it after.

    The session's ``cluster`` is one; a test that installs cluster-scoped objects it must own
    (the Helm chart's CRD) starts another one (about 5 s)."""
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    binaries = _binaries_or_fail(env)
    env["DUOTONE_CLUSTER_DIR"] = str(cluster_dir)
    env["DUOTONE_CLUSTER_NAME"] = name
    try:
        _run_script("cluster-up.sh", env)
        yield Cluster(kubeconfig=cluster_dir / "kubeconfig", binaries=binaries)
    finally:
        _run_script("cluster-down.sh", env)


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{slug}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, with its default ServiceAccount; deleted afterwards."""
    name = _namespace_name(request.node.name)
    with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

        def default_service_account() -> bool:
            try:
                core.read_namespaced_service_account("default", name)
            except ApiException as error:
                if error.status == 404:
                    return False
                raise
            return True

        # Pods are refused until kube-controller-manager has created this ServiceAccount.
        wait_for(default_service_account, timeout_s=30, what=f"ServiceAccount {name}/default")
        try:
            yield name
        finally:
            core.delete_namespace(name)


def restart_api_server(cluster: Cluster, down_s: float) -> None:
    """SIGKILL the control plane's kube-apiserver, keep it down for `down_s`, start it again with
    the same command line, and wait until it is ready. The pid file is updated, so
    hack/cluster-down.sh stops the new process."""
    (pid_file,) = cluster.kubeconfig.parent.glob("kwok/clusters/*/pids/kube-apiserver.pid")
    pid = int(pid_file.read_text().strip())
    proc = Path(f"/proc/{pid}")
    argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
    cwd = os.readlink(proc / "cwd")
    environ = dict(
        entry.decode().split("=", 1)
        for entry in (proc / "environ").read_bytes().split(b"\0")
        if b"=" in entry
    )
    log_file = pid_file.parent.parent / "logs" / "kube-apiserver.log"
    os.kill(pid, signal.SIGKILL)
    poll(lambda: not proc.exists(), timeout_s=30, what="kube-apiserver to exit", every_s=0.1)
    down_until = time.monotonic() + down_s
    poll(
        lambda: time.monotonic() >= down_until, timeout_s=down_s + 5, what="the outage", every_s=0.2
    )
    with log_file.open("ab") as log:
        started = subprocess.Popen(  # the command line it ran before
            argv, cwd=cwd, env=environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    pid_file.write_text(str(started.pid))
    poll(
        lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
        timeout_s=120,
        what="kube-apiserver to be ready again",
        every_s=0.5,
    )
    # Ready is not yet serving everything: custom resources come back once the API server has
    # re-read the CRDs.
    poll(
        lambda: (
            cluster.kubectl(
                "get", "imagemodeldeployments", "--all-namespaces", check=False
            ).returncode
            == 0
        ),
        timeout_s=120,
        what="kube-apiserver to serve the IMDs again",
        every_s=0.5,
    )
    # The controller manager's watches reconnect with a backoff of their own: a namespace gets
    # its default ServiceAccount again only then (every test's `namespace` fixture waits for it).
    probe = f"apiserver-restart-probe-{os.getpid()}"
    cluster.kubectl("create", "namespace", probe)
    poll(
        lambda: (
            cluster.kubectl(
                "get", "serviceaccount", "default", f"--namespace={probe}", check=False
            ).returncode
            == 0
        ),
        timeout_s=180,
        what="the controller manager to serve again (a new namespace's default ServiceAccount)",
        every_s=1,
    )
    cluster.kubectl("delete", "namespace", probe, "--wait=false")
