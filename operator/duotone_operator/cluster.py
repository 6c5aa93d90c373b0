"""Thin adapter over the Kubernetes API: apply, list, delete, look up.

Everything here is I/O; every decision about what to apply or delete is made by the pure
`render` layer. Calls are synchronous (Kopf runs sync handlers in worker threads).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from duotone_operator.api.v1alpha1 import API_VERSION, KIND, TIER_NAMES, TierName
from duotone_operator.render import names
from duotone_operator.render.children import CHILD_KINDS
from duotone_operator.render.endpoints import SERVICE_NAME_LABEL
from duotone_operator.render.references import References
from duotone_operator.render.status import DeploymentObservation

Manifest = dict[str, Any]
ChildKey = tuple[str, str]
"""(kind, name) of a child in the IMD's namespace."""

TRANSIENT_STATUSES = frozenset({409, 429, 500, 502, 503, 504})


def client_configuration(kubeconfig: str | None) -> k8s.Configuration:
    """Credentials from the pod's ServiceAccount inside a cluster, else from a kubeconfig."""
    configuration = k8s.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not kubeconfig:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration
        )
    return configuration


def connection_info(configuration: k8s.Configuration) -> kopf.ConnectionInfo:
    """The same credentials for Kopf's own API client, so both act as one identity."""
    token = configuration.api_key.get("BearerToken") or configuration.api_key.get("authorization")
    if token and token.startswith("Bearer "):
        token = token.removeprefix("Bearer ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme="Bearer" if token else None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def is_transient(error: ApiException) -> bool:
    """Worth retrying soon: conflicts, throttling, server trouble."""
    return error.status in TRANSIENT_STATUSES


def replicas_managers(deployment: Manifest) -> set[str]:
    """The field managers that own spec.replicas."""
    return {
        entry.get("manager", "")
        for entry in deployment.get("metadata", {}).get("managedFields") or []
        if "f:replicas" in (((entry.get("fieldsV1") or {}).get("f:spec")) or {})
    }


def tier_observations(
    children: Mapping[ChildKey, Manifest],
) -> dict[TierName, DeploymentObservation]:
    """Observations of the tier Deployments among an IMD's children, by tier."""
    found: dict[TierName, DeploymentObservation] = {}
    for (kind, _), child in children.items():
        tier = child["metadata"].get("labels", {}).get(names.TIER_LABEL)
        if kind == "Deployment" and tier in TIER_NAMES:
            found[tier] = observe_deployment(child)
    return found


def observe_deployment(deployment: Manifest) -> DeploymentObservation:
    spec = deployment.get("spec", {})
    status = deployment.get("status") or {}
    conditions = status.get("conditions") or []
    stuck = any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in conditions
    )
    return DeploymentObservation(
        desired=int(spec.get("replicas", 1)),
        replicas=int(status.get("replicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        generation=int(deployment["metadata"].get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        stuck=stuck,
    )


class Cluster:
    """The Kubernetes API as the operator uses it."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._api_client = api_client
        self._dynamic: DynamicClient | None = None
        self._resources: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def _resource(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        with self._lock:
            if self._dynamic is None:
                self._dynamic = DynamicClient(self._api_client)  # type: ignore[no-untyped-call]
            if key not in self._resources:
                self._resources[key] = self._dynamic.resources.get(
                    api_version=api_version, kind=kind
                )
            return self._resources[key]

    # ------------------------------------------------------------------ children

    def apply(self, manifest: Manifest, *, manager: str = names.FIELD_MANAGER) -> Manifest:
        """Server-side apply; `force` takes over fields a human or another tool changed."""
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        result = resource.server_side_apply(
            body=manifest,
            namespace=manifest["metadata"].get("namespace"),
            field_manager=manager,
            force_conflicts=True,
        )
        applied: Manifest = result.to_dict()
        return applied

    def children(self, namespace: str, imd: str) -> dict[ChildKey, Manifest]:
        """Every child of one IMD, found by its labels."""
        found: dict[ChildKey, Manifest] = {}
        for api_version, kind in CHILD_KINDS:
            listed = self._resource(api_version, kind).get(
                namespace=namespace, label_selector=names.instance_selector(imd)
            )
            for item in listed.to_dict().get("items", []):
                found[(kind, item["metadata"]["name"])] = {
                    "apiVersion": api_version,
                    "kind": kind,
                    **item,
                }
        return found

    def delete(self, manifest: Manifest) -> bool:
        """Delete one object (dependents in the background); False if it was already gone."""
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        try:
            resource.delete(
                name=manifest["metadata"]["name"],
                namespace=manifest["metadata"].get("namespace"),
                body={"propagationPolicy": "Background"},
            )
        except NotFoundError:
            return False
        return True

    def deployments(self, namespace: str, imd: str) -> dict[ChildKey, Manifest]:
        """The IMD's Deployments only (all a status refresh needs): one list call."""
        listed = self._resource("apps/v1", "Deployment").get(
            namespace=namespace, label_selector=names.instance_selector(imd)
        )
        return {
            ("Deployment", item["metadata"]["name"]): item
            for item in listed.to_dict().get("items", [])
        }

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Set spec.replicas through the `/scale` subresource, as the autoscaler's manager."""
        k8s.AppsV1Api(self._api_client).patch_namespaced_deployment_scale(
            name,
            namespace,
            {"spec": {"replicas": replicas}},
            field_manager=names.SCALE_FIELD_MANAGER,
        )

    def endpoint_slices(self, namespace: str, services: Sequence[str]) -> list[Manifest]:
        """The EndpointSlices of the named Services (label kubernetes.io/service-name)."""
        selector = f"{SERVICE_NAME_LABEL} in ({','.join(services)})"
        listed = self._resource("discovery.k8s.io/v1", "EndpointSlice").get(
            namespace=namespace, label_selector=selector
        )
        items: list[Manifest] = listed.to_dict().get("items", [])
        return items

    # ------------------------------------------------------------------ lookups

    def _exists(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        try:
            self._resource(api_version, kind).get(name=name, namespace=namespace)
        except NotFoundError:
            return False
        return True

    def missing(self, wanted: References, namespace: str) -> References:
        """The subset of `wanted` that does not exist."""
        claims = [
            c
            for c in wanted.claims
            if not self._exists("v1", "PersistentVolumeClaim", namespace, c)
        ]
        secrets = [s for s in wanted.secrets if not self._exists("v1", "Secret", namespace, s)]
        offered = self.offered_resources(wanted.gpu_resources) if wanted.gpu_resources else set()
        return References(
            claims=frozenset(claims),
            secrets=frozenset(secrets),
            gpu_resources=frozenset(wanted.gpu_resources - offered),
        )

    def offered_resources(self, resources: Iterable[str]) -> set[str]:
        """Which of `resources` at least one node has allocatable."""
        wanted = set(resources)
        nodes = self._resource("v1", "Node").get().to_dict().get("items", [])
        offered = set()
        for node in nodes:
            allocatable = (node.get("status") or {}).get("allocatable") or {}
            offered |= {r for r in wanted if str(allocatable.get(r, "0")) not in ("0", "")}
        return offered

    # ------------------------------------------------------------------ events

    def post_event(
        self,
        involved: Mapping[str, Any],
        kind: Literal["Normal", "Warning"],
        reason: str,
        message: str,
    ) -> None:
        """A core/v1 Event about `involved`, as `kubectl describe` shows it."""
        metadata = involved["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._resource("v1", "Event").create(
            namespace=metadata["namespace"],
            body={
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "generateName": f"{metadata['name']}.",
                    "namespace": metadata["namespace"],
                },
                "involvedObject": {
                    "apiVersion": involved.get("apiVersion", API_VERSION),
                    "kind": involved.get("kind", KIND),
                    "name": metadata["name"],
                    "namespace": metadata["namespace"],
                    "uid": metadata.get("uid"),
                    "resourceVersion": metadata.get("resourceVersion"),
                },
                "type": kind,
                "reason": reason,
                "message": message[:1024],
                "source": {"component": names.FIELD_MANAGER},
                "reportingComponent": names.FIELD_MANAGER,
                "reportingInstance": socket.gethostname(),
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            },
        )

    # ------------------------------------------------------------------ the IMDs

    def get_imd(self, namespace: str, name: str) -> Manifest | None:
        try:
            found: Manifest = (
                self._resource(API_VERSION, KIND).get(name=name, namespace=namespace).to_dict()
            )
        except NotFoundError:
            return None
        return found

    def list_imd_versions(self, namespaces: list[str]) -> dict[str, str]:
        """uid -> resourceVersion of every IMD in `namespaces` (all when empty)."""
        resource = self._resource(API_VERSION, KIND)
        items = []
        scopes: list[str | None] = list(namespaces) or [None]
        for namespace in scopes:
            items += resource.get(namespace=namespace).to_dict().get("items", [])
        return {i["metadata"]["uid"]: i["metadata"]["resourceVersion"] for i in items}

    def patch_imd_status(self, namespace: str, name: str, status: Manifest) -> None:
        """JSON merge patch of the status subresource (None values delete keys)."""
        resource = self._resource(API_VERSION, KIND)
        resource.status.patch(
            name=name,
            namespace=namespace,
            body={"status": status},
            content_type="application/merge-patch+json",
        )
