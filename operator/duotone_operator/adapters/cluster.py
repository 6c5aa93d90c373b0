"""The Kubernetes API as the operator uses it: a Protocol, and its one error type.

`KubernetesCluster` (adapters/kubernetes.py) implements it with the Kubernetes client;
`tests/fakes/cluster.py` implements it in memory for handler and autoscaler tests. Handlers and
the autoscaler see only this interface, so they never touch a client library's types.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

from duotone_operator.plan import ChildKey
from duotone_operator.render import names
from duotone_operator.render.references import References

Manifest = dict[str, Any]


class ClusterError(Exception):
    """The API server refused or failed a call; `status` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"API {status}: {message}")
        self.status = status
        self.message = message


class Cluster(Protocol):
    """Every call the handlers and the autoscaler make. Calls are synchronous (Kopf runs sync
    handlers in worker threads; the autoscaler uses `asyncio.to_thread`) and raise
    ClusterError."""

    def apply(self, manifest: Manifest, *, manager: str = names.FIELD_MANAGER) -> Manifest:
        """Server-side apply, taking over conflicting fields; returns the object as stored."""
        ...

    def children(self, namespace: str, imd: str) -> dict[ChildKey, Manifest]:
        """Every child of one IMD (found by its labels), with managedFields."""
        ...

    def delete(self, manifest: Manifest) -> bool:
        """Delete one object; False if it was already gone."""
        ...

    def deployments(self, namespace: str, imd: str) -> dict[ChildKey, Manifest]:
        """The IMD's Deployments only (all a status refresh needs)."""
        ...

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Set spec.replicas through the /scale subresource, as the autoscaler's manager."""
        ...

    def endpoint_slices(self, namespace: str, services: Sequence[str]) -> list[Manifest]:
        """The EndpointSlices of the named Services."""
        ...

    def missing(self, wanted: References, namespace: str) -> References:
        """The subset of `wanted` that does not exist."""
        ...

    def offered_resources(self, resources: Iterable[str]) -> set[str]:
        """Which of `resources` at least one node has allocatable."""
        ...

    def post_event(
        self,
        involved: Mapping[str, Any],
        kind: Literal["Normal", "Warning"],
        reason: str,
        message: str,
    ) -> None:
        """A core/v1 Event about `involved`."""
        ...

    def get_imd(self, namespace: str, name: str) -> Manifest | None:
        """One IMD, or None when it does not exist."""
        ...

    def list_imd_versions(self, namespaces: list[str]) -> dict[str, str]:
        """uid -> resourceVersion of every IMD in `namespaces` (all when empty)."""
        ...

    def patch_imd_status(
        self, namespace: str, name: str, status: Manifest, *, resource_version: str | None = None
    ) -> None:
        """JSON merge patch of the status subresource (None values delete keys); with
        `resource_version`, only if the IMD is still at that version (else ClusterError 409)."""
        ...
