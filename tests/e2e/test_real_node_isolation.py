"""Tier isolation on the real node, where kube-router enforces NetworkPolicies (hack/real-node.sh).

First the enforcer itself, with a hand-written policy in front of a stand-in server: open to
every pod without it, closed to all but the pods it names with it, open again once it is gone.
Then the operator's own policies: a pod outside the IMD cannot open a tier pod's Triton ports
(HTTP, gRPC) nor, being outside the scraper namespaces, its metrics port, while the IMD's router
pod can open the Triton ports and answers a generation request through them; the tier pods
themselves cannot open any connection (egress closed).
Probe pods run the router's image (python3 opens the connections from inside them).
"""

from __future__ import annotations

from duotone_contracts.services import ROUTER_HTTP, TIER_GRPC, TIER_HTTP, TIER_METRICS
from duotone_operator.render import names
from duotone_testbed.cluster import RealCluster, poll
from tests.support.real_node import (
    deploy,
    generate,
    open_ports,
    probe_pod,
    small_imd,
    start_pods,
    tier_pods,
)

TRITON_PORTS = (TIER_HTTP.number, TIER_GRPC.number)
POLICY_TIMEOUT_S = 60
"""How long the enforcer may take to follow a NetworkPolicy change (it takes well under 1 s)."""


def test_a_network_policy_closes_a_pods_ports_to_every_pod_it_does_not_name(
    real_cluster: RealCluster, real_namespace: str
) -> None:
    pods = start_pods(
        real_cluster,
        real_namespace,
        probe_pod("server", {"app": "server"}, listen=TRITON_PORTS),
        probe_pod("friend", {"role": "friend"}),
        probe_pod("stranger"),
    )
    server = {(pods["server"], port) for port in TRITON_PORTS}

    def stranger_sees(expected: set[tuple[str, int]]) -> bool:
        return open_ports(real_cluster, real_namespace, "stranger", sorted(server)) == expected

    # Without a policy every pod reaches the server: whatever closes it later is the policy.
    poll(lambda: stranger_sees(server), timeout_s=30, what="the server open to the stranger")

    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "server"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "server"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"role": "friend"}}}],
                    "ports": [{"protocol": "TCP", "port": port} for port in TRITON_PORTS],
                }
            ],
        },
    }
    real_cluster.apply(policy, real_namespace)
    poll(
        lambda: stranger_sees(set()),
        timeout_s=POLICY_TIMEOUT_S,
        what="the server closed to the stranger",
    )
    assert open_ports(real_cluster, real_namespace, "friend", sorted(server)) == server

    real_cluster.kubectl("delete", "networkpolicy", "server", "-n", real_namespace)
    poll(
        lambda: stranger_sees(server),
        timeout_s=POLICY_TIMEOUT_S,
        what="the server open to the stranger again once the policy is gone",
    )


def test_a_pod_outside_the_imd_cannot_open_tritons_ports_while_its_router_can(
    real_cluster: RealCluster, real_namespace: str
) -> None:
    url = deploy(real_cluster, real_namespace, small_imd("iso"))
    poll(
        lambda: real_cluster.kubectl(
            "get",
            "networkpolicy",
            names.tiers_policy_name("iso"),
            "-n",
            real_namespace,
            "--ignore-not-found",
            "-o",
            "name",
        ).strip(),
        timeout_s=60,
        what="the operator's NetworkPolicy of the tier pods",
    )
    tiers = [
        (pod["status"]["podIP"], port)
        for tier in ("efficient", "flagship")
        for pod in tier_pods(real_cluster, real_namespace, "iso", tier)
        for port in TRITON_PORTS
    ]
    assert tiers, "no tier pod to probe"
    metrics = sorted({(host, TIER_METRICS.number) for host, _ in tiers})
    selector = ",".join(f"{k}={v}" for k, v in names.router_selector("iso").items())
    router = real_cluster.pods(real_namespace, selector)[0]
    router_api = (router["status"]["podIP"], ROUTER_HTTP.number)
    start_pods(real_cluster, real_namespace, probe_pod("outsider"))

    # The outsider's own network works (the router's API is open to any pod), so the closed
    # tier ports are the policies' doing.
    poll(
        lambda: (
            open_ports(real_cluster, real_namespace, "outsider", [*tiers, *metrics, router_api])
            == {router_api}
        ),
        timeout_s=POLICY_TIMEOUT_S,
        what="the tier pods' ports closed to the outsider, the router's API open",
    )
    router_pod = router["metadata"]["name"]
    assert open_ports(real_cluster, real_namespace, router_pod, tiers) == set(tiers)
    assert generate(url, extra_body={"tier": "efficient"}).startswith(b"\x89PNG")
    # Tier pods open no connection (their policy closes egress): not even the router's API,
    # which the outsider reaches.
    tier_pod = tier_pods(real_cluster, real_namespace, "iso")[0]["metadata"]["name"]
    assert open_ports(real_cluster, real_namespace, tier_pod, [router_api]) == set()
