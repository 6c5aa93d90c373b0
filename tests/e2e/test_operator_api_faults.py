"""The operator when the API server goes away: a blackholed then reset connection (through a
TCP proxy between the operator and the API server), and a kube-apiserver killed and restarted.
The operator must recover by itself, and its liveness must not fail for an outage."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from duotone_testbed.faultproxy import FaultProxy
from tests.support import presets
from tests.support.cluster import Cluster, restart_api_server, wait_for
from tests.support.operator_process import OperatorProcess, start_operator, wait_ready

pytestmark = pytest.mark.cluster

BLACKHOLE_S = float(os.environ.get("DUOTONE_BLACKHOLE_SECONDS", "150"))
"""How long the route to the API server drops packets. Longer than the watch's client timeout
(90 s here) and the liveness grace (60 s); the issue's 400 s run is recorded in
docs/benchmarks.md (DUOTONE_BLACKHOLE_SECONDS=400)."""
RECOVERY_S = 60


@pytest.fixture
def proxied(
    cluster: Cluster, operator_kubeconfig: Path, namespace: str, tmp_path: Path
) -> Iterator[tuple[FaultProxy, OperatorProcess]]:
    """An operator whose every API call goes through a FaultProxy."""
    config = yaml.safe_load(operator_kubeconfig.read_text())
    server = urlsplit(config["clusters"][0]["cluster"]["server"])
    proxy = FaultProxy(server.hostname or "127.0.0.1", server.port or 443).start()
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
    kubeconfig = tmp_path / "proxied-kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(config))
    operator = start_operator(
        kubeconfig,
        tmp_path / "operator.log",
        (
            f"--namespace={namespace}",
            "--retry-base-seconds=1",
            "--retry-max-seconds=4",
            "--watch-timeout-seconds=60",
            "--watch-grace-seconds=60",
        ),
    )
    try:
        yield proxy, operator
    finally:
        operator.stop()
        proxy.stop()


def _health(operator: OperatorProcess) -> int:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{operator.health_port}/healthz", timeout=5
        ) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _patch_steps(cluster: Cluster, namespace: str, steps: int) -> None:
    patch = {"spec": {"tiers": {"efficient": {"defaults": {"steps": steps}}}}}
    cluster.kubectl(
        "patch",
        "imd",
        "sd",
        f"--namespace={namespace}",
        "--type=merge",
        f"--patch={json.dumps(patch)}",
    )


def _applied(cluster: Cluster, namespace: str, steps: int) -> dict[str, Any] | None:
    """The IMD once the generation with `steps` is reconciled and in its tier document."""
    imd = cluster.get_json("imd", "sd", f"--namespace={namespace}")
    config = cluster.get_json("configmap", "sd-efficient-config", f"--namespace={namespace}")
    done = (imd.get("status") or {}).get("observedGeneration") == imd["metadata"]["generation"]
    document = json.loads(config["data"]["tier.json"])
    return imd if done and document["spec"]["defaults"]["steps"] == steps else None


def test_a_blackholed_then_reset_api_connection_heals_without_a_restart(
    cluster: Cluster, namespace: str, proxied: tuple[FaultProxy, OperatorProcess]
) -> None:
    proxy, operator = proxied
    cluster.create(presets.small_pair("sd").build(), namespace)
    wait_ready(cluster, namespace, "sd", operator)

    proxy.blackhole()
    _patch_steps(cluster, namespace, 3)  # the canary change, made while the operator is cut off
    outage_ends = time.monotonic() + BLACKHOLE_S
    while time.monotonic() < outage_ends:
        assert operator.process.poll() is None, operator.log()
        time.sleep(1)  # the outage's length, not a synchronisation
    assert _applied(cluster, namespace, 3) is None, "nothing can have been reconciled"
    proxy.reset()

    back = time.monotonic()
    wait_for(
        lambda: _applied(cluster, namespace, 3),
        timeout_s=RECOVERY_S,
        what="the canary change to be reconciled after traffic returned",
    )
    print(f"canary reconciled {time.monotonic() - back:.1f} s after traffic returned")
    assert operator.process.poll() is None, "the operator recovered without a restart"
    wait_for(lambda: _health(operator) == 200, timeout_s=60, what="/healthz 200 again")


def test_a_killed_and_restarted_api_server_is_ridden_out(
    cluster: Cluster, namespace: str, proxied: tuple[FaultProxy, OperatorProcess]
) -> None:
    _, operator = proxied
    cluster.create(presets.small_pair("sd").build(), namespace)
    wait_ready(cluster, namespace, "sd", operator)

    restart_api_server(cluster, down_s=20)
    assert _health(operator) == 200, "an API-server outage is not a dead watch"
    back = time.monotonic()
    _patch_steps(cluster, namespace, 4)
    wait_for(
        lambda: _applied(cluster, namespace, 4),
        timeout_s=RECOVERY_S,
        what="a change made after the restart to be reconciled",
    )
    print(f"reconciled {time.monotonic() - back:.1f} s after the API server was back")
    assert operator.process.poll() is None, operator.log()
    assert _health(operator) == 200
