"""NetworkPolicies of one IMD: who may open the tier pods' and the router pods' ports (pure).

Tier pods answer only their own IMD's router pods (Triton's HTTP and gRPC ports, behind the
drain gate) and the metrics scrapers (the metrics port); nothing else in the cluster can reach
Triton directly, around the router's keys, limits and validation. Router pods answer the
configured clients on the endpoint port (any source by default) and the scrapers on the metrics
port, whose series name API keys.

Tier pods open no connection at all (their model is in the image, on a claim or in a
pre-pulled cache; the router calls them, not the reverse), so their egress is closed, unless a
tier downloads its model (`model.allowDownload`): the hub's addresses cannot be named by a
policy, so egress is then open. The router's egress stays open: it needs the API server
(EndpointSlices), whose address and port are cluster-specific; manifest auditors report that
(docs/helm.md, "Manifest audit").
"""

from __future__ import annotations

from collections.abc import Sequence

from duotone_contracts.api.v1alpha1 import ImageModelDeployment
from duotone_contracts.services import (
    ROUTER_HTTP,
    ROUTER_METRICS,
    TIER_GRPC,
    TIER_HTTP,
    TIER_METRICS,
    ServicePort,
)
from duotone_operator.render import names
from duotone_operator.render.objects import Manifest, RenderSettings, object_metadata

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""The label the API server sets on every namespace to its name."""


def _ports(*ports: ServicePort) -> list[Manifest]:
    return [{"protocol": "TCP", "port": port.number} for port in ports]


def scraper_peers(settings: RenderSettings) -> list[Manifest]:
    """Pods of the scraper namespaces; every namespace when none is configured."""
    if not settings.scraper_namespaces:
        return [{"namespaceSelector": {}}]
    return [
        {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}
        for namespace in settings.scraper_namespaces
    ]


def _rule(ports: list[Manifest], peers: Sequence[Manifest] | None) -> Manifest:
    """An ingress rule; `peers` None allows any source."""
    rule: Manifest = {"ports": ports}
    if peers is not None:
        rule["from"] = list(peers)
    return rule


def _downloads(imd: ImageModelDeployment) -> bool:
    """Whether a tier of the IMD may fetch its model from the hub at start."""
    return any(spec.model.allow_download for spec in imd.spec.tiers.present().values())


def render_network_policies(imd: ImageModelDeployment, settings: RenderSettings) -> list[Manifest]:
    """`<imd>-tiers` and `<imd>-router`, or nothing when the operator renders no policies."""
    if not settings.network_policies:
        return []
    name = imd.metadata.name
    scrapers = scraper_peers(settings)
    tiers: Manifest = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_metadata(
            imd, names.tiers_policy_name(name), names.instance_labels(name)
        ),
        "spec": {
            "podSelector": {"matchLabels": names.tiers_selector(name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                _rule(
                    _ports(TIER_HTTP, TIER_GRPC),
                    [{"podSelector": {"matchLabels": names.router_selector(name)}}],
                ),
                _rule(_ports(TIER_METRICS), scrapers),
            ],
        },
    }
    if _downloads(imd):
        # No rule at all (the API server stores `[]` as absent) closes egress; one empty rule
        # opens it.
        tiers["spec"]["egress"] = [{}]
    clients = list(settings.router_ingress_from) or None
    router: Manifest = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_metadata(imd, names.router_name(name), names.router_labels(name)),
        "spec": {
            "podSelector": {"matchLabels": names.router_selector(name)},
            "policyTypes": ["Ingress"],
            "ingress": [
                _rule(_ports(ROUTER_HTTP), clients),
                _rule(_ports(ROUTER_METRICS), scrapers),
            ],
        },
    }
    return [tiers, router]
