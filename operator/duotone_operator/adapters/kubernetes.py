"""The Kubernetes API through the official client: the `Cluster` Protocol's real adapter.

Everything here is I/O; what to apply, delete or post is decided by `plan`. Calls are
synchronous (Kopf runs sync handlers in worker threads). Client errors leave this module as
`ClusterError`, with the API server's own message.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, ParamSpec, TypeVar

import kopf
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import NotFoundError

from duotone_contracts.api.v1alpha1 import API_VERSION, KIND
from duotone_contracts.services import SERVICE_NAME_LABEL
from duotone_operator.adapters import telemetry
from duotone_operator.adapters.child_index import ChildIndex
from duotone_operator.adapters.cluster import ClusterError, Manifest
from duotone_operator.plan import ChildKey
from duotone_operator.render import names
from duotone_operator.render.children import CHILD_KINDS
from duotone_operator.render.references import References


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


_BEARER_SCHEME = re.compile(r"bearer\s+", re.IGNORECASE)


def bearer_token(api_key: str | None) -> str | None:
    """The raw token of an API key: the kubeconfig loader stores `Bearer <token>`, the in-cluster
    loader `bearer <token>` (the scheme is case-insensitive, RFC 9110), and Kopf adds its own."""
    if not api_key:
        return None
    scheme = _BEARER_SCHEME.match(api_key)
    token = api_key[scheme.end() :] if scheme else api_key
    return token.strip() or None


def connection_info(configuration: k8s.Configuration) -> kopf.ConnectionInfo:
    """The same credentials for Kopf's own API client, so both act as one identity."""
    token = bearer_token(
        configuration.api_key.get("BearerToken") or configuration.api_key.get("authorization")
    )
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme="Bearer" if token else None,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def _api_message(error: ApiException) -> str:
    """The API server's own message (e.g. "failed to allocate a serviceIP: range is full")."""
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason)
    except (ValueError, AttributeError):
        return str(error.reason)


P = ParamSpec("P")
R = TypeVar("R")


def _cluster_errors(call: Callable[P, R]) -> Callable[P, R]:
    """Raise the client's ApiException (and its subclasses) and connection failures as
    ClusterError."""

    @functools.wraps(call)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return call(*args, **kwargs)
        except ApiException as error:
            raise ClusterError(int(error.status or 0), _api_message(error)) from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            # No answer at all (refused, reset, timed out): as transient as a 503.
            raise ClusterError(503, f"API server unreachable: {error}") from error

    return translated


def _count_requests(api_client: k8s.ApiClient) -> None:
    """Count every HTTP request this client sends, by verb (`telemetry.API_REQUESTS`)."""
    rest = api_client.rest_client
    if getattr(rest, "duotone_counted", False):
        return
    send: Callable[..., Any] = getattr(rest, "request")  # noqa: B009 - untyped in the client

    def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        telemetry.API_REQUESTS.labels(method.lower()).inc()
        return send(method, url, *args, **kwargs)

    setattr(rest, "request", counted)  # noqa: B010 - an instance override, not a class patch
    setattr(rest, "duotone_counted", True)  # noqa: B010


REQUEST_TIMEOUT_SECONDS = (5.0, 30.0)
"""(connect, read) limit of every call: a call to an API server that stopped answering fails
(and is retried with backoff) instead of holding a worker forever."""


class KubernetesCluster:
    """The Kubernetes API as the operator uses it (implements `adapters.cluster.Cluster`)."""

    def __init__(
        self,
        api_client: k8s.ApiClient,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT_SECONDS,
        index: ChildIndex | None = None,
    ) -> None:
        self._api_client = api_client
        self._timeout = request_timeout
        self.index = index
        """The watches' view of the children (`adapters.child_index`): once synced, `children`
        reads it instead of listing; applies and deletes write through it."""
        _count_requests(api_client)
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

    @_cluster_errors
    def apply(self, manifest: Manifest, *, manager: str = names.FIELD_MANAGER) -> Manifest:
        """Server-side apply; `force` takes over fields a human or another tool changed."""
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        result = resource.server_side_apply(
            body=manifest,
            namespace=manifest["metadata"].get("namespace"),
            field_manager=manager,
            force_conflicts=True,
            _request_timeout=self._timeout,
        )
        applied: Manifest = result.to_dict()
        if self.index is not None:
            self.index.seen(applied)
        return applied

    @_cluster_errors
    def children(self, namespace: str, imd: str) -> dict[ChildKey, Manifest]:
        """Every child of one IMD, found by its labels: from the index once it is synced (slim
        copies, `child_index.slim`), else one LIST call per kind of child."""
        if self.index is not None and self.index.synced:
            return self.index.children(namespace, imd)
        found: dict[ChildKey, Manifest] = {}
        for api_version, kind in CHILD_KINDS:
            listed = self._resource(api_version, kind).get(
                namespace=namespace,
                label_selector=names.instance_selector(imd),
                _request_timeout=self._timeout,
            )
            for item in listed.to_dict().get("items", []):
                found[(kind, item["metadata"]["name"])] = {
                    "apiVersion": api_version,
                    "kind": kind,
                    **item,
                }
        return found

    @_cluster_errors
    def delete(self, manifest: Manifest) -> bool:
        """Delete one object (dependents in the background); False if it was already gone."""
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        try:
            resource.delete(
                name=manifest["metadata"]["name"],
                namespace=manifest["metadata"].get("namespace"),
                body={"propagationPolicy": "Background"},
                _request_timeout=self._timeout,
            )
        except NotFoundError:
            if self.index is not None:
                self.index.gone(manifest)
            return False
        if self.index is not None:
            self.index.gone(manifest)
        return True

    @_cluster_errors
    def deployments(self, namespace: str, imd: str) -> dict[ChildKey, Manifest]:
        """The IMD's Deployments only (all a status refresh needs): one list call."""
        listed = self._resource("apps/v1", "Deployment").get(
            namespace=namespace,
            label_selector=names.instance_selector(imd),
            _request_timeout=self._timeout,
        )
        return {
            ("Deployment", item["metadata"]["name"]): item
            for item in listed.to_dict().get("items", [])
        }

    @_cluster_errors
    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        """Set spec.replicas through the `/scale` subresource, as the autoscaler's manager."""
        k8s.AppsV1Api(self._api_client).patch_namespaced_deployment_scale(
            name,
            namespace,
            {"spec": {"replicas": replicas}},
            field_manager=names.SCALE_FIELD_MANAGER,
            _request_timeout=self._timeout,
        )

    @_cluster_errors
    def endpoint_slices(self, namespace: str, services: Sequence[str]) -> list[Manifest]:
        """The EndpointSlices of the named Services (label kubernetes.io/service-name)."""
        selector = f"{SERVICE_NAME_LABEL} in ({','.join(services)})"
        listed = self._resource("discovery.k8s.io/v1", "EndpointSlice").get(
            namespace=namespace, label_selector=selector, _request_timeout=self._timeout
        )
        items: list[Manifest] = listed.to_dict().get("items", [])
        return items

    # ------------------------------------------------------------------ lookups

    def _exists(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        try:
            self._resource(api_version, kind).get(
                name=name, namespace=namespace, _request_timeout=self._timeout
            )
        except NotFoundError:
            return False
        return True

    @_cluster_errors
    def missing(self, wanted: References, namespace: str) -> References:
        """The subset of `wanted` that does not exist. A Secret the operator may not read
        counts as present: it cannot tell, and a missing one shows in the pods."""
        claims = [
            c
            for c in wanted.claims
            if not self._exists("v1", "PersistentVolumeClaim", namespace, c)
        ]

        def secret_missing(name: str) -> bool:
            try:
                return not self._exists("v1", "Secret", namespace, name)
            except ApiException as error:
                # A cluster-wide install grants no Secret read (operator-rbac-rules.yaml); the
                # pods of a missing Secret wait in ContainerCreating with a FailedMount event.
                if error.status == 403:
                    return False
                raise

        secrets = [s for s in wanted.secrets if secret_missing(s)]
        offered = self.offered_resources(wanted.gpu_resources) if wanted.gpu_resources else set()
        return References(
            claims=frozenset(claims),
            secrets=frozenset(secrets),
            gpu_resources=frozenset(wanted.gpu_resources - offered),
        )

    @_cluster_errors
    def offered_resources(self, resources: Iterable[str]) -> set[str]:
        """Which of `resources` at least one node has allocatable."""
        wanted = set(resources)
        nodes = (
            self._resource("v1", "Node")
            .get(_request_timeout=self._timeout)
            .to_dict()
            .get("items", [])
        )
        offered = set()
        for node in nodes:
            allocatable = (node.get("status") or {}).get("allocatable") or {}
            offered |= {r for r in wanted if str(allocatable.get(r, "0")) not in ("0", "")}
        return offered

    # ------------------------------------------------------------------ events

    @_cluster_errors
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
            _request_timeout=self._timeout,
        )

    # ------------------------------------------------------------------ the IMDs

    @_cluster_errors
    def get_imd(self, namespace: str, name: str) -> Manifest | None:
        try:
            found: Manifest = (
                self._resource(API_VERSION, KIND)
                .get(name=name, namespace=namespace, _request_timeout=self._timeout)
                .to_dict()
            )
        except NotFoundError:
            return None
        return found

    @_cluster_errors
    def list_imd_versions(self, namespaces: list[str]) -> dict[str, str]:
        """uid -> resourceVersion of every IMD in `namespaces` (all when empty)."""
        resource = self._resource(API_VERSION, KIND)
        items = []
        scopes: list[str | None] = list(namespaces) or [None]
        for namespace in scopes:
            items += (
                resource.get(namespace=namespace, _request_timeout=self._timeout)
                .to_dict()
                .get("items", [])
            )
        return {i["metadata"]["uid"]: i["metadata"]["resourceVersion"] for i in items}

    @_cluster_errors
    def patch_imd_status(
        self, namespace: str, name: str, status: Manifest, *, resource_version: str | None = None
    ) -> None:
        """JSON merge patch of the status subresource (None values delete keys); with
        `resource_version`, a precondition: the API server answers 409 if the IMD moved on."""
        resource = self._resource(API_VERSION, KIND)
        body: Manifest = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        resource.status.patch(
            name=name,
            namespace=namespace,
            body=body,
            content_type="application/merge-patch+json",
            _request_timeout=self._timeout,
        )
