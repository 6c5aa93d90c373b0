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

    @property
    def termination_grace_seconds(self) -> int:
        """Above pre-stop pause plus exit timeout, so Triton always exits on its own first."""
        return self.pre_stop_seconds + self.exit_timeout_seconds + 15


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
