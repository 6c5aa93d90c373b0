"""The benchmarks' own local control plane (hack/cluster-up.sh) with the CRD installed."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BenchCluster:
    state: Path
    env: dict[str, str]

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    def kubectl(self, *args: str, stdin: bytes | None = None) -> None:
        binary = os.environ.get("DUOTONE_KUBECTL", "kubectl")
        subprocess.run(
            [binary, "--kubeconfig", str(self.kubeconfig), *args],
            input=stdin,
            check=True,
            capture_output=True,
        )


@contextmanager
def bench_cluster() -> Iterator[BenchCluster]:
    """Start a control plane of its own (state in a new temporary folder), install the CRD,
    and remove everything afterwards."""
    state = Path(tempfile.mkdtemp(prefix="duotone-bench-"))
    env = {**os.environ, "DUOTONE_CLUSTER_DIR": str(state), "DUOTONE_CLUSTER_NAME": "duotone-bench"}
    env.pop("KUBECONFIG", None)
    subprocess.run([ROOT / "hack" / "cluster-up.sh"], env=env, check=True, capture_output=True)
    cluster = BenchCluster(state, env)
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        # `kubectl wait` can fail before its own timeout on a freshly started, busy control plane
        # (seen once while images were building): try again until a deadline.
        deadline = time.monotonic() + 120
        while True:
            try:
                cluster.kubectl(
                    "wait",
                    "--for=condition=Established",
                    "--timeout=10s",
                    "crd/imagemodeldeployments.duotone.io",
                )
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield cluster
    finally:
        subprocess.run(
            [ROOT / "hack" / "cluster-down.sh"], env=env, check=False, capture_output=True
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile: the sample at rank round(q x (n - 1))."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
