"""What every child object shares: metadata with its owner, operator-wide settings, and the
restricted security contexts of every pod (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from duotone_contracts.api.v1alpha1 import ImageModelDeployment
from duotone_contracts.services import ServicePort

CONFIG_MOUNT = "/etc/duotone"
"""Where a pod's ConfigMap (tier.json or router.json) is mounted."""
RUNTIME_UID = 10001
"""The runtime image's non-root user (runtime/Dockerfile)."""

DEFAULT_ROUTER_IMAGE = "registry.example.com/duotone-router:0.1.0"
"""The router image when neither the IMD nor the operator's --router-image names one."""

Manifest = dict[str, Any]

GRACE_MARGIN_S = 15
"""Seconds of grace beyond the drain a pod needs, so it exits on its own before SIGKILL."""


@dataclass(frozen=True)
class RenderSettings:
    """Operator-wide choices that are not in the IMD."""

    exit_timeout_seconds: int = 30
    """Triton waits this long for in-flight requests after SIGTERM."""
    pre_stop_seconds: int = 10
    """Pause before SIGTERM so Services stop routing to a terminating pod first."""
    shm_size: str = "1Gi"
    """Shared memory of the Triton Python backend (requests and responses pass through it)."""
    router_image: str = DEFAULT_ROUTER_IMAGE
    """Router image when the IMD names none (built from router/Dockerfile)."""
    network_policies: bool = True
    """Render a NetworkPolicy for the tier pods and one for the router pods of each IMD."""
    scraper_namespaces: tuple[str, ...] = ()
    """Namespaces whose pods may scrape the tiers' and routers' metrics ports (the operator's
    and Prometheus'); empty: pods of any namespace."""
    router_ingress_from: tuple[Manifest, ...] = ()
    """NetworkPolicy peers that may call the routers' endpoint; empty: any source."""

    def exit_timeout_for(self, request_timeout_ms: int) -> int:
        """Triton's exit timeout for a tier: at least the tier's request timeout, so every
        request queued at SIGTERM is either run or expired (never cut) before Triton exits.

        e.g. the default 30 s with a flagship timeout of 120 s -> 120.
        """
        return max(self.exit_timeout_seconds, -(-request_timeout_ms // 1000))

    def termination_grace_for(self, request_timeout_ms: int) -> int:
        """Above pre-stop pause plus exit timeout, so Triton always exits on its own first."""
        return self.pre_stop_seconds + self.exit_timeout_for(request_timeout_ms) + GRACE_MARGIN_S

    def router_termination_grace(self, longest_request_timeout_ms: int) -> int:
        """The router's pre-stop pause plus the longest tier deadline plus a margin: a request
        that arrived just before SIGTERM may take that long (and may retry within it)."""
        return self.pre_stop_seconds + -(-longest_request_timeout_ms // 1000) + GRACE_MARGIN_S


def owner_reference(imd: ImageModelDeployment) -> Manifest:
    """The ownerReference every child carries, so deleting the IMD deletes them."""
    if imd.metadata.uid is None:
        raise ValueError("an IMD without metadata.uid cannot own children")
    return {
        "apiVersion": imd.api_version,
        "kind": imd.kind,
        "name": imd.metadata.name,
        "uid": imd.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_metadata(
    imd: ImageModelDeployment, name: str, labels: dict[str, str], **extra: Any
) -> Manifest:
    """Name, namespace, labels and the owner reference of one child."""
    return {
        "name": name,
        "namespace": imd.metadata.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(imd)],
        **extra,
    }


def restricted_container_security() -> Manifest:
    """Pod Security Standard "restricted", plus a read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_pod_security() -> Manifest:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_port(port: ServicePort) -> Manifest:
    """A container's named port."""
    return {"name": port.name, "containerPort": port.number, "protocol": "TCP"}


def service_port(port: ServicePort) -> Manifest:
    """A Service port that targets the container port of the same name."""
    return {"name": port.name, "port": port.number, "targetPort": port.name, "protocol": "TCP"}
