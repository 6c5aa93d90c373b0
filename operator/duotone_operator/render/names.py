"""The one place that names child objects and sets their labels and annotations.

Names derive from the IMD name (at most 40 characters, enforced by the CRD), so the longest
child name, `<imd>-flagship-config`, stays within the 63-character DNS label limit.
"""

from __future__ import annotations

from duotone_contracts.api.v1alpha1 import TierName
from duotone_contracts.services import ROUTER_HTTP

PART_OF = "duotone"
MANAGED_BY = "duotone-operator"
FIELD_MANAGER = "duotone-operator"
"""Server-side apply field manager of every child the reconciler writes."""
SCALE_FIELD_MANAGER = "duotone-autoscaler"
"""Field manager that owns tier Deployments' spec.replicas, so reconciles never reset it."""

TIER_LABEL = "duotone.io/tier"
CONFIG_HASH_ANNOTATION = "duotone.io/config-hash"
COMPONENT_TIER = "tier"
COMPONENT_ROUTER = "router"


def tier_name(imd: str, tier: TierName) -> str:
    """Deployment, Service and PodDisruptionBudget of a tier: `marketing-efficient`."""
    return f"{imd}-{tier}"


def tier_config_name(imd: str, tier: TierName) -> str:
    """ConfigMap with the tier's runtime and Triton settings."""
    return f"{imd}-{tier}-config"


def runtime_service_account(imd: str) -> str:
    """ServiceAccount of the tier pods (no API access, token not mounted)."""
    return f"{imd}-runtime"


def router_name(imd: str) -> str:
    """Deployment, Service and ServiceAccount of the router."""
    return f"{imd}-router"


def router_config_name(imd: str) -> str:
    """ConfigMap with the router's routing table."""
    return f"{imd}-router-config"


def endpoint(imd: str, namespace: str) -> str:
    """The in-cluster URL clients call."""
    return f"http://{router_name(imd)}.{namespace}.svc:{ROUTER_HTTP.number}"


def instance_labels(imd: str) -> dict[str, str]:
    """Labels every child of one IMD carries (and selects on for cleanup)."""
    return {
        "app.kubernetes.io/name": PART_OF,
        "app.kubernetes.io/instance": imd,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def tier_selector(imd: str, tier: TierName) -> dict[str, str]:
    """Immutable pod selector of a tier Deployment."""
    return {
        "app.kubernetes.io/instance": imd,
        "app.kubernetes.io/component": COMPONENT_TIER,
        TIER_LABEL: tier,
    }


def tiers_selector(imd: str) -> dict[str, str]:
    """The pods of every tier of one IMD (what its tiers' NetworkPolicy selects)."""
    return {"app.kubernetes.io/instance": imd, "app.kubernetes.io/component": COMPONENT_TIER}


def tiers_policy_name(imd: str) -> str:
    """NetworkPolicy of the tier pods: `marketing-tiers`."""
    return f"{imd}-tiers"


def tier_labels(imd: str, tier: TierName) -> dict[str, str]:
    return {**instance_labels(imd), **tier_selector(imd, tier)}


def router_selector(imd: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": imd, "app.kubernetes.io/component": COMPONENT_ROUTER}


def router_labels(imd: str) -> dict[str, str]:
    return {**instance_labels(imd), **router_selector(imd)}


def instance_selector(imd: str) -> str:
    """Label selector string for every child of one IMD."""
    return f"app.kubernetes.io/instance={imd},app.kubernetes.io/managed-by={MANAGED_BY}"
