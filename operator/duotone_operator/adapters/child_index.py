"""What the operator knows of its children without listing them: an in-memory index.

Fed by the child watches (a Kopf index handler per kind of child sees every listed, added and
modified child; the drift handler sees deletions) and by the operator's own writes (the answer
of each apply, each delete), so a reconcile or a repair reads an IMD's children from memory
instead of one LIST call per kind of child.

Kopf starts no handler before every index has seen its kind's initial listing; the first handler
that runs marks the index `synced`, and until then `KubernetesCluster.children` lists as before.
Each child is kept slim: the fields a plan reads (identity, owners, `spec.replicas` and the
managers that own it), about 1 KiB per child at fleet size instead of the whole object.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

ChildKey = tuple[str, str]
"""(kind, name) of a child in its IMD's namespace (as `plan.ChildKey`)."""

INSTANCE_LABEL = "app.kubernetes.io/instance"
"""The label naming a child's IMD (`render.names.instance_labels`)."""


def slim(child: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a child that `plan.plan_reconcile` and `plan.plan_repair` read."""
    metadata = child.get("metadata") or {}
    replicas_owners = [
        {"manager": entry.get("manager"), "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        for entry in metadata.get("managedFields") or []
        if "f:replicas" in (((entry.get("fieldsV1") or {}).get("f:spec")) or {})
    ]
    kept: dict[str, Any] = {
        "apiVersion": child.get("apiVersion"),
        "kind": child.get("kind"),
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
            "resourceVersion": metadata.get("resourceVersion"),
            "labels": {INSTANCE_LABEL: (metadata.get("labels") or {}).get(INSTANCE_LABEL)},
            "ownerReferences": [
                {"uid": owner.get("uid")} for owner in metadata.get("ownerReferences") or []
            ],
            "managedFields": replicas_owners,
        },
    }
    spec = child.get("spec")
    if isinstance(spec, Mapping) and "replicas" in spec:
        kept["spec"] = {"replicas": spec["replicas"]}
    return kept


def _older(candidate: str | None, held: str | None) -> bool:
    """Is `candidate` an older resourceVersion than `held`? Versions are opaque to clients; the
    API server's are etcd revisions (decimal integers), and anything else is never "older"."""
    if not candidate or not held or not candidate.isdigit() or not held.isdigit():
        return False
    return int(candidate) < int(held)


class ChildIndex:
    """The children of every IMD, by (namespace, IMD name) then (kind, name). Thread-safe: the
    watch feeds it on the event loop, reconciles read and write through it in worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_imd: dict[tuple[str, str], dict[ChildKey, dict[str, Any]]] = {}
        self.synced = False
        """True once every kind of child was listed (Kopf's index gate, see the module doc)."""

    @staticmethod
    def _keys(child: Mapping[str, Any]) -> tuple[tuple[str, str], ChildKey] | None:
        metadata = child.get("metadata") or {}
        owner = (metadata.get("labels") or {}).get(INSTANCE_LABEL)
        namespace, name, kind = metadata.get("namespace"), metadata.get("name"), child.get("kind")
        if not (owner and namespace and name and kind):
            return None
        return (str(namespace), str(owner)), (str(kind), str(name))

    def seen(self, child: Mapping[str, Any]) -> None:
        """A child as it is now (a watch event or an apply's answer); an older version than the
        one held is ignored (a watch event that trails the operator's own write)."""
        keys = self._keys(child)
        if keys is None:
            return
        imd, child_key = keys
        kept = slim(child)
        with self._lock:
            held = self._by_imd.get(imd, {}).get(child_key)
            if held is not None and _older(
                kept["metadata"]["resourceVersion"], held["metadata"]["resourceVersion"]
            ):
                return
            self._by_imd.setdefault(imd, {})[child_key] = kept

    def gone(self, child: Mapping[str, Any]) -> None:
        """A child was deleted. A deletion of an older object of the same name (its uid differs
        from the one held: the operator re-created it since) changes nothing."""
        keys = self._keys(child)
        if keys is None:
            return
        imd, child_key = keys
        uid = (child.get("metadata") or {}).get("uid")
        with self._lock:
            children = self._by_imd.get(imd, {})
            held = children.get(child_key)
            if held is None or (uid and held["metadata"]["uid"] not in (None, uid)):
                return
            del children[child_key]
            if not children:
                del self._by_imd[imd]

    def children(self, namespace: str, imd: str) -> dict[ChildKey, dict[str, Any]]:
        """A copy of one IMD's children (slim)."""
        with self._lock:
            return dict(self._by_imd.get((namespace, imd), {}))

    def __len__(self) -> int:
        with self._lock:
            return sum(len(children) for children in self._by_imd.values())
