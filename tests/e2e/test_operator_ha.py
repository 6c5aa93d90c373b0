"""Two operator replicas against the real control plane: one writes, the other stands by and
takes over when the writer is SIGKILLed, and many kills mid-reconcile end exactly right."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from duotone_contracts.api import parse_imd
from duotone_operator.adapters.lease import LEASE_NAME
from duotone_operator.render.children import render_children
from duotone_operator.render.objects import RenderSettings
from tests.support import presets
from tests.support.cluster import Cluster, wait_for
from tests.support.manifests import ROOT
from tests.support.operator_process import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    OperatorProcess,
    grant_role,
    wait_ready,
)

pytestmark = pytest.mark.cluster

LEASE_RULES = ROOT / "charts" / "duotone" / "files" / "operator-lease-rules.yaml"
LEASE_SECONDS = 4
"""Short, so that each takeover takes seconds (the chart's default is 15)."""


@pytest.fixture
def lease_rights(cluster: Cluster, operator_kubeconfig: Any) -> Iterator[None]:
    """The chart's leader-election Role for the operator's ServiceAccount, and no Lease left
    over from another test."""
    grant_role(
        cluster,
        OPERATOR_NAMESPACE,
        f"{OPERATOR_ACCOUNT}-leader-election",
        yaml.safe_load(LEASE_RULES.read_text()),
    )
    cluster.kubectl(
        "delete", "lease", LEASE_NAME, f"--namespace={OPERATOR_NAMESPACE}", "--ignore-not-found"
    )
    yield
    cluster.kubectl(
        "delete", "lease", LEASE_NAME, f"--namespace={OPERATOR_NAMESPACE}", "--ignore-not-found"
    )


def _metric(operator: OperatorProcess, name: str) -> float | None:
    """One sample of the operator's own metrics (None: not exported or not reachable)."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=2
        ) as answer:
            text = answer.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def _leaders(operators: list[OperatorProcess]) -> list[OperatorProcess]:
    return [
        o
        for o in operators
        if o.process.poll() is None and _metric(o, "duotone_operator_leader") == 1
    ]


Starter = Callable[..., OperatorProcess]


def _replica(run_operator: Starter, namespace: str) -> OperatorProcess:
    return run_operator(
        namespace,
        extra=(
            f"--leader-election-namespace={OPERATOR_NAMESPACE}",
            f"--leader-election-lease-seconds={LEASE_SECONDS}",
        ),
    )


def _one_leader(operators: list[OperatorProcess], timeout_s: float) -> OperatorProcess:
    def exactly_one() -> OperatorProcess | None:
        leaders = _leaders(operators)
        return leaders[0] if len(leaders) == 1 else None

    return wait_for(exactly_one, timeout_s=timeout_s, what="exactly one leading replica")


@pytest.mark.usefixtures("lease_rights")
def test_one_replica_writes_and_the_standby_takes_over_after_a_sigkill(
    cluster: Cluster, namespace: str, run_operator: Starter
) -> None:
    first, second = _replica(run_operator, namespace), _replica(run_operator, namespace)
    leader = _one_leader([first, second], timeout_s=60)
    standby = second if leader is first else first
    cluster.create(presets.small_pair("sd").build(), namespace)
    wait_ready(cluster, namespace, "sd", leader)

    applied = 'duotone_operator_children_applied_total{kind="Deployment"}'
    assert (_metric(leader, applied) or 0) >= 3
    assert _metric(standby, "duotone_operator_leader") == 0
    assert not _metric(standby, applied), "the standby wrote nothing"
    lease = cluster.get_json("lease", LEASE_NAME, f"--namespace={OPERATOR_NAMESPACE}")
    assert lease["spec"]["holderIdentity"].endswith(f"-{leader.process.pid}")

    leader.stop(kill=True)
    taken = wait_for(
        lambda: _leaders([standby]) or None, timeout_s=30, what="the standby to take over"
    )
    assert taken == [standby]
    cluster.kubectl(
        "patch",
        "imd",
        "sd",
        f"--namespace={namespace}",
        "--type=merge",
        '--patch={"spec": {"tiers": {"efficient": {"defaults": {"steps": 3}}}}}',
    )
    wait_ready(cluster, namespace, "sd", standby, timeout_s=60)
    config = cluster.get_json("configmap", "sd-efficient-config", f"--namespace={namespace}")
    assert '"steps": 3' in config["data"]["tier.json"]


def _rendered_matches(cluster: Cluster, namespace: str, name: str) -> list[str]:
    """Where the live children differ from a fresh render (spec and data only)."""
    imd = cluster.get_json("imd", name, f"--namespace={namespace}")
    wanted = render_children(
        parse_imd(imd),
        RenderSettings(),
        existing_tier_deployments=frozenset(imd["spec"]["tiers"]),
    )
    differences = []
    for child in wanted:
        live = cluster.get_json(
            child["kind"].lower(), child["metadata"]["name"], f"--namespace={namespace}"
        )
        for part in ("spec", "data", "rules", "subjects"):
            if part in child and not _subset(live.get(part), child[part]):
                differences.append(f"{child['kind']}/{child['metadata']['name']}.{part}")
    return differences


def _subset(live: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict):
        return isinstance(live, dict) and all(_subset(live.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return (
            isinstance(live, list)
            and len(live) == len(wanted)
            and all(_subset(a, b) for a, b in zip(live, wanted, strict=True))
        )
    return bool(live == wanted)


@pytest.mark.usefixtures("lease_rights")
def test_twenty_sigkills_of_the_leader_during_a_twenty_imd_reconcile_end_exactly_right(
    cluster: Cluster, namespace: str, run_operator: Starter
) -> None:
    count = 20
    for i in range(count):
        cluster.create(presets.small_pair(f"sd{i:02d}").build(), namespace)
    operators = [_replica(run_operator, namespace), _replica(run_operator, namespace)]
    for kill in range(20):
        leader = _one_leader(operators, timeout_s=60)
        # Let the new leader write for a moment (a different moment each time), then kill it.
        applied = 'duotone_operator_children_applied_total{kind="ConfigMap"}'
        if kill < 10:

            def wrote(current: OperatorProcess = leader, metric: str = applied) -> bool:
                return (_metric(current, metric) or 0) >= 1

            wait_for(wrote, timeout_s=30, what="the leader to apply something", interval_s=0.05)
        leader.stop(kill=True)
        operators = [o for o in operators if o is not leader]
        operators.append(_replica(run_operator, namespace))
    survivor = _one_leader(operators, timeout_s=60)
    for i in range(count):
        wait_ready(cluster, namespace, f"sd{i:02d}", survivor, timeout_s=180)
    for i in range(count):
        name = f"sd{i:02d}"
        imd = cluster.get_json("imd", name, f"--namespace={namespace}")
        assert imd["status"]["observedGeneration"] == imd["metadata"]["generation"]
        assert _rendered_matches(cluster, namespace, name) == [], name
    deployments = cluster.get_json("deployments", f"--namespace={namespace}")["items"]
    assert len(deployments) == count * 3
