"""FakeCluster: the operator's `Cluster` Protocol in memory (a fake, for handler tests).

It keeps objects by (kind, namespace, name) and emulates what the handlers rely on from the
real API server: server-side apply per field manager (the object is the merge of what each
manager applied, so a field nobody applies any more is gone, and a Deployment without
replicas defaults to 1), managedFields of spec.replicas, uids, generations, resourceVersions,
label-selected listing, JSON merge patches of an IMD's status, and Events. Errors are injected
per method with `fail(method, status)`. The real adapter is
`duotone_operator.adapters.kubernetes.KubernetesCluster`; e2e tests use it against a real API
server.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from duotone_contracts.api.v1alpha1 import KIND
from duotone_operator.adapters.cluster import ClusterError, Manifest
from duotone_operator.plan import ChildKey
from duotone_operator.render import names
from duotone_operator.render.children import CHILD_KINDS
from duotone_operator.render.references import References

ObjectKey = tuple[str, str, str]
"""(kind, namespace, name)."""


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386: None deletes a key."""
    result = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = _merge_patch(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@dataclass
class PostedEvent:
    """An Event as `kubectl describe` would list it."""

    object_name: str
    type: str
    reason: str
    message: str


@dataclass
class _Stored:
    """One object: what each field manager applied (in apply order), and the rest."""

    applied: dict[str, Manifest] = field(default_factory=dict)
    uid: str = ""
    generation: int = 1
    resource_version: int = 1
    status: Manifest = field(default_factory=dict)


@dataclass
class FakeCluster:
    """In-memory Kubernetes as the handlers and the autoscaler use it."""

    objects: dict[ObjectKey, _Stored] = field(default_factory=dict)
    imds: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    existing: set[tuple[str, str, str]] = field(default_factory=set)
    """(kind, namespace, name) of the PVCs and Secrets that exist."""
    offered: set[str] = field(default_factory=lambda: {"nvidia.com/gpu"})
    """Extended resources some node has allocatable."""
    slices: list[Manifest] = field(default_factory=list)
    events: list[PostedEvent] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    """Every Protocol method called, in order."""
    _failures: dict[str, ClusterError] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    # ------------------------------------------------------------------ test controls

    def fail(self, method: str, status: int, message: str = "injected") -> None:
        """Make the next call of `method` raise ClusterError(status)."""
        self._failures[method] = ClusterError(status, message)

    def _call(self, method: str) -> None:
        self.calls.append(method)
        error = self._failures.pop(method, None)
        if error is not None:
            raise error

    def create_imd(self, manifest: Mapping[str, Any]) -> Manifest:
        """Store an IMD as the API server would (uid, generation 1, resourceVersion)."""
        body = copy.deepcopy(dict(manifest))
        meta = body.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{next(self._ids)}")
        meta["generation"] = 1
        meta["resourceVersion"] = str(next(self._ids))
        self.imds[(meta["namespace"], meta["name"])] = body
        return copy.deepcopy(body)

    def update_imd_spec(self, namespace: str, name: str, spec: Mapping[str, Any]) -> Manifest:
        """Replace an IMD's spec: a new generation."""
        body = self.imds[(namespace, name)]
        body["spec"] = copy.deepcopy(dict(spec))
        body["metadata"]["generation"] += 1
        body["metadata"]["resourceVersion"] = str(next(self._ids))
        return copy.deepcopy(body)

    def imd(self, namespace: str, name: str) -> Manifest:
        return copy.deepcopy(self.imds[(namespace, name)])

    def get(self, kind: str, namespace: str, name: str) -> Manifest | None:
        stored = self.objects.get((kind, namespace, name))
        return None if stored is None else self._view(kind, namespace, name, stored)

    def remove(self, kind: str, namespace: str, name: str) -> None:
        """Delete an object behind the operator's back (out of band)."""
        del self.objects[(kind, namespace, name)]

    def set_deployment_status(self, namespace: str, name: str, **status: int) -> None:
        """What the Deployment controller would report (replicas, readyReplicas, ...)."""
        self.objects[("Deployment", namespace, name)].status = dict(status)

    def managers_of_replicas(self, namespace: str, name: str) -> set[str]:
        stored = self.objects[("Deployment", namespace, name)]
        return {m for m, a in stored.applied.items() if "replicas" in (a.get("spec") or {})}

    # ------------------------------------------------------------------ the object model

    def _view(self, kind: str, namespace: str, name: str, stored: _Stored) -> Manifest:
        body: dict[str, Any] = {}
        for applied in stored.applied.values():
            body = _merge(body, applied)
        if kind == "Deployment":
            body.setdefault("spec", {}).setdefault("replicas", 1)
            replicas_owners = [
                m for m, a in stored.applied.items() if "replicas" in (a.get("spec") or {})
            ]
            body["metadata"]["managedFields"] = [
                {"manager": m, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
                for m in replicas_owners
            ]
        body["metadata"].update(
            uid=stored.uid,
            generation=stored.generation,
            resourceVersion=str(stored.resource_version),
            namespace=namespace,
            name=name,
        )
        if stored.status:
            body["status"] = copy.deepcopy(stored.status)
        return body

    def _list(self, namespace: str, kinds: Iterable[str], selector: Mapping[str, str]) -> Any:
        for (kind, ns, name), stored in sorted(self.objects.items()):
            if ns != namespace or kind not in kinds:
                continue
            view = self._view(kind, ns, name, stored)
            labels = view["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in selector.items()):
                yield kind, name, view

    @staticmethod
    def _selector(imd: str) -> dict[str, str]:
        return {"app.kubernetes.io/instance": imd, "app.kubernetes.io/managed-by": names.MANAGED_BY}

    # ------------------------------------------------------------------ the Protocol

    def apply(self, manifest: Manifest, *, manager: str = names.FIELD_MANAGER) -> Manifest:
        self._call("apply")
        kind, meta = manifest["kind"], manifest["metadata"]
        key = (kind, meta.get("namespace") or "default", meta["name"])
        stored = self.objects.get(key)
        if stored is None:
            stored = self.objects[key] = _Stored(uid=f"uid-{next(self._ids)}")
        before = self._view(*key, stored) if stored.applied else None
        stored.applied.pop(manager, None)
        stored.applied[manager] = copy.deepcopy(manifest)
        after = self._view(*key, stored)
        if before is not None and before.get("spec") != after.get("spec"):
            stored.generation += 1
        stored.resource_version = next(self._ids)
        return self._view(*key, stored)

    def children(self, namespace: str, imd: str) -> dict[ChildKey, Manifest]:
        self._call("children")
        kinds = [kind for _, kind in CHILD_KINDS]
        return {(k, n): v for k, n, v in self._list(namespace, kinds, self._selector(imd))}

    def delete(self, manifest: Manifest) -> bool:
        self._call("delete")
        meta = manifest["metadata"]
        key = (manifest["kind"], meta.get("namespace") or "default", meta["name"])
        return self.objects.pop(key, None) is not None

    def deployments(self, namespace: str, imd: str) -> dict[ChildKey, Manifest]:
        self._call("deployments")
        return {(k, n): v for k, n, v in self._list(namespace, ["Deployment"], self._selector(imd))}

    def scale_deployment(self, namespace: str, name: str, replicas: int) -> None:
        self._call("scale_deployment")
        stored = self.objects.get(("Deployment", namespace, name))
        if stored is None:
            raise ClusterError(404, f'deployments.apps "{name}" not found')
        stored.applied[names.SCALE_FIELD_MANAGER] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        stored.generation += 1

    def endpoint_slices(self, namespace: str, services: Sequence[str]) -> list[Manifest]:
        self._call("endpoint_slices")
        return [
            copy.deepcopy(s)
            for s in self.slices
            if s["metadata"].get("namespace", namespace) == namespace
            and (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") in services
        ]

    def missing(self, wanted: References, namespace: str) -> References:
        self._call("missing")
        return References(
            claims=frozenset(
                c
                for c in wanted.claims
                if ("PersistentVolumeClaim", namespace, c) not in self.existing
            ),
            secrets=frozenset(
                s for s in wanted.secrets if ("Secret", namespace, s) not in self.existing
            ),
            gpu_resources=frozenset(wanted.gpu_resources - self.offered),
        )

    def offered_resources(self, resources: Iterable[str]) -> set[str]:
        self._call("offered_resources")
        return set(resources) & self.offered

    def post_event(
        self,
        involved: Mapping[str, Any],
        kind: Literal["Normal", "Warning"],
        reason: str,
        message: str,
    ) -> None:
        self._call("post_event")
        self.events.append(PostedEvent(involved["metadata"]["name"], kind, reason, message))

    def get_imd(self, namespace: str, name: str) -> Manifest | None:
        self._call("get_imd")
        found = self.imds.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def list_imd_versions(self, namespaces: list[str]) -> dict[str, str]:
        self._call("list_imd_versions")
        return {
            body["metadata"]["uid"]: body["metadata"]["resourceVersion"]
            for (namespace, _), body in self.imds.items()
            if not namespaces or namespace in namespaces
        }

    def patch_imd_status(
        self, namespace: str, name: str, status: Manifest, *, resource_version: str | None = None
    ) -> None:
        self._call("patch_imd_status")
        body = self.imds.get((namespace, name))
        if body is None:
            raise ClusterError(404, f'{KIND} "{name}" not found')
        if resource_version is not None and resource_version != body["metadata"]["resourceVersion"]:
            raise ClusterError(409, "the object has been modified")
        body["status"] = _merge_patch(body.get("status") or {}, status)
        body["metadata"]["resourceVersion"] = str(next(self._ids))
