"""Every child of one IMD, in the order they should be applied."""

from __future__ import annotations

from duotone_contracts.api.v1alpha1 import ImageModelDeployment, TierName
from duotone_operator.render.network import render_network_policies
from duotone_operator.render.objects import Manifest, RenderSettings
from duotone_operator.render.router import (
    render_router_config_map,
    render_router_deployment,
    render_router_pdb,
    render_router_rbac,
    render_router_service,
    render_service_accounts,
)
from duotone_operator.render.tier import (
    render_tier_config_map,
    render_tier_deployment,
    render_tier_pdb,
    render_tier_service,
)

CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("apps/v1", "Deployment"),
)
"""Kinds of children, in apply order: what pods reference exists before the pods."""

CHILD_PLURALS: dict[str, str] = {
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "ConfigMap": "configmaps",
    "Service": "services",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "NetworkPolicy": "networkpolicies",
    "Deployment": "deployments",
}
"""The API's resource name of each kind of child (what watches and RBAC rules name)."""


def render_children(
    imd: ImageModelDeployment,
    settings: RenderSettings,
    *,
    existing_tier_deployments: frozenset[TierName] = frozenset(),
) -> list[Manifest]:
    """All desired children. Tier Deployments not in `existing_tier_deployments` are rendered
    with `replicas: min` (their creation); the others without replicas (the autoscaler's)."""
    children: list[Manifest] = [
        *render_service_accounts(imd),
        *render_router_rbac(imd),
        *render_network_policies(imd, settings),
    ]
    for tier, spec in imd.spec.tiers.present().items():
        replicas = None if tier in existing_tier_deployments else spec.replicas.minimum
        children += [
            render_tier_config_map(imd, tier, spec),
            render_tier_service(imd, tier),
            render_tier_pdb(imd, tier),
            render_tier_deployment(imd, tier, spec, settings, replicas=replicas),
        ]
    children += [
        render_router_config_map(imd),
        render_router_service(imd),
        render_router_pdb(imd),
        render_router_deployment(imd, settings),
    ]
    order = {kind: i for i, (_, kind) in enumerate(CHILD_KINDS)}
    return sorted(children, key=lambda m: order[m["kind"]])
