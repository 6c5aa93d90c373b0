"""What one reconcile does, decided from what is desired and what is observed (pure).

`plan_reconcile(owner, desired, observed, ...)` compares the rendered children with those
found in the cluster and returns the steps: hand a tier Deployment's replicas to the autoscaler,
apply each child, delete the children this IMD owns that are no longer desired (a removed
tier's), and the events to post. `plan_problems` is the plan when the spec cannot work yet (a
missing PVC or Secret): no child is touched, the status and a Warning event per problem say
why, and a retry follows a capped backoff. The handler executes plans and decides nothing;
tests/unit/operator/test_plan.py and test_handlers.py pin every case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from duotone_contracts.api.v1alpha1 import ImageModelDeployment, TierName
from duotone_operator.policy.backoff import retry_delay
from duotone_operator.render import names
from duotone_operator.render.children import render_children
from duotone_operator.render.objects import Manifest, RenderSettings
from duotone_operator.render.status import Problem

ChildKey = tuple[str, str]
"""(kind, name) of a child in the IMD's namespace."""

TRANSIENT_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
"""API answers worth retrying soon: conflicts, throttling, server trouble."""


@dataclass(frozen=True)
class Event:
    """A core/v1 Event to post about the IMD."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Apply:
    """Server-side apply one child as the reconciler's field manager."""

    manifest: Manifest


@dataclass(frozen=True)
class HandOverReplicas:
    """Make the autoscaler's field manager co-own a tier Deployment's spec.replicas.

    The reconciler sets replicas only when it creates a tier Deployment; its later applies omit
    the field. Were the reconciler its only owner, the API server would reset it to 1 on the
    next apply, so the autoscaler's manager takes it over (idempotent: a crash in between is
    repaired on the next reconcile, before that apply). `kubectl scale` or the autoscaler then
    change it freely.
    """

    namespace: str
    name: str
    replicas: int

    def manifest(self) -> Manifest:
        """The apply body, sent under `names.SCALE_FIELD_MANAGER`."""
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {"replicas": self.replicas},
        }


@dataclass(frozen=True)
class Delete:
    """Delete one child (its dependents in the background)."""

    manifest: Manifest


Step = Apply | HandOverReplicas | Delete


@dataclass(frozen=True)
class Retry:
    """Raise a temporary error: Kopf calls the handler again after `delay_seconds`."""

    message: str
    delay_seconds: float


@dataclass(frozen=True)
class ReconcilePlan:
    """Steps in order, then events; the status shows `problems` (none: the children's state)."""

    steps: tuple[Step, ...] = ()
    events: tuple[Event, ...] = ()
    problems: tuple[Problem, ...] = ()
    retry: Retry | None = None

    def count(self, kind: type[Apply | Delete]) -> int:
        return sum(1 for step in self.steps if isinstance(step, kind))


def key(manifest: Mapping[str, Any]) -> ChildKey:
    return (str(manifest["kind"]), str(manifest["metadata"]["name"]))


def replicas_managers(deployment: Mapping[str, Any]) -> set[str]:
    """The field managers that own spec.replicas."""
    return {
        entry.get("manager", "")
        for entry in deployment.get("metadata", {}).get("managedFields") or []
        if "f:replicas" in (((entry.get("fieldsV1") or {}).get("f:spec")) or {})
    }


def _is_tier_deployment(manifest: Mapping[str, Any]) -> bool:
    return manifest["kind"] == "Deployment" and names.TIER_LABEL in (
        manifest["metadata"].get("labels") or {}
    )


def desired_children(
    imd: ImageModelDeployment, settings: RenderSettings, observed: Mapping[ChildKey, Manifest]
) -> list[Manifest]:
    """Every child to apply. A tier Deployment that exists already is rendered without
    replicas: the autoscaler owns them (see `HandOverReplicas`)."""
    name = imd.metadata.name
    existing: frozenset[TierName] = frozenset(
        tier
        for tier in imd.spec.tiers.present()
        if ("Deployment", names.tier_name(name, tier)) in observed
    )
    return render_children(imd, settings, existing_tier_deployments=existing)


def _owned(child: Mapping[str, Any], uid: str | None) -> bool:
    owners = child["metadata"].get("ownerReferences") or []
    return uid is not None and any(o.get("uid") == uid for o in owners)


def plan_reconcile(
    owner: ImageModelDeployment,
    desired: Sequence[Manifest],
    observed: Mapping[ChildKey, Manifest],
    *,
    handled_generation: int | None,
) -> ReconcilePlan:
    """Apply `desired` over `observed`, delete what `owner` owns and no longer wants.

    e.g. flagship tier removed: apply the efficient tier's and the router's children, delete
    the flagship's Deployment, Service, ConfigMap and PodDisruptionBudget (ownerReference uid
    is the IMD's; a same-named object someone else owns is never deleted), event "Deleted".
    `handled_generation` is the status' observedGeneration: an "Applied" event marks a new
    generation that created nothing.
    """
    steps: list[Step] = []
    created: list[str] = []
    for child in desired:
        child_key = key(child)
        before = observed.get(child_key)
        hand_over = _is_tier_deployment(child) and (
            before is None or not replicas_managers(before) - {names.FIELD_MANAGER}
        )
        namespace = str(child["metadata"].get("namespace") or "")
        if before is not None and hand_over:
            replicas = int((before.get("spec") or {}).get("replicas", 1))
            steps.append(HandOverReplicas(namespace, child_key[1], replicas))
        steps.append(Apply(child))
        if before is None:
            created.append(f"{child_key[0]}/{child_key[1]}")
            if hand_over:
                steps.append(
                    HandOverReplicas(namespace, child_key[1], int(child["spec"]["replicas"]))
                )
    wanted = {key(child) for child in desired}
    deleted = [
        child
        for child_key, child in observed.items()
        if child_key not in wanted and _owned(child, owner.metadata.uid)
    ]
    steps += [Delete(child) for child in deleted]

    generation = owner.metadata.generation
    events: list[Event] = []
    if created:
        events.append(
            Event("Normal", "Created", f"generation {generation}: created {', '.join(created)}")
        )
    if deleted:
        listed = ", ".join(f"{k}/{n}" for k, n in map(key, deleted))
        events.append(Event("Normal", "Deleted", f"deleted {listed}"))
    if handled_generation != generation and not created:
        events.append(
            Event("Normal", "Applied", f"generation {generation}: {len(desired)} children applied")
        )
    return ReconcilePlan(steps=tuple(steps), events=tuple(events))


def plan_problems(
    found: Sequence[Problem], *, retry: int, base_seconds: float, max_seconds: float
) -> ReconcilePlan:
    """The spec cannot work yet: touch no child, say why, retry after a capped backoff."""
    delay = retry_delay(retry, base_seconds=base_seconds, max_seconds=max_seconds)
    return ReconcilePlan(
        events=tuple(Event("Warning", p.reason, p.message) for p in found),
        problems=tuple(found),
        retry=Retry(f"{found[0].message}; retrying in {delay:.0f}s", delay),
    )


def plan_api_failure(
    status: int, message: str, *, retry: int, max_seconds: float
) -> tuple[Event, Retry | None]:
    """The API server refused a step: a Warning event, and a retry if the cause is transient.

    Conflicts clear in a moment; an overloaded or failing API server must not be hammered: the
    same capped backoff as for impossible specs, from 1 s. Other refusals are errors (no retry
    here; Kopf's own error handling applies).
    """
    text = f"API {status}: {message}"
    event = Event("Warning", "ApplyFailed", text)
    if status not in TRANSIENT_STATUSES:
        return event, None
    delay = retry_delay(retry, base_seconds=1, max_seconds=max_seconds)
    return event, Retry(f"{text}; retrying in {delay:.0f}s", delay)


OWN_MANAGERS = frozenset({names.FIELD_MANAGER, names.SCALE_FIELD_MANAGER})
"""The field managers whose writes are the operator's own."""


@dataclass(frozen=True)
class ForeignWrite:
    """The newest write to a child's spec or metadata by someone other than the operator."""

    manager: str
    time: str
    version: str
    """The generation when the kind has one (status writes do not move it), else the
    resourceVersion."""


def foreign_write(child: Mapping[str, Any]) -> ForeignWrite | None:
    """Who last wrote the child, when it was not the operator (its managedFields).

    Writes through a subresource (status, scale) are not drift: controllers report status, and
    `kubectl scale` or the autoscaler own replicas. A foreign write in the same second as the
    operator's newest one counts as foreign (repairing an object in sync changes nothing).
    """
    metadata = child.get("metadata") or {}
    entries = [e for e in metadata.get("managedFields") or [] if not e.get("subresource")]
    own = max(
        (str(e.get("time") or "") for e in entries if e.get("manager") in OWN_MANAGERS), default=""
    )
    foreign = [
        e
        for e in entries
        if e.get("manager") not in OWN_MANAGERS and str(e.get("time") or "") >= own
    ]
    if not foreign:
        return None
    newest = max(foreign, key=lambda e: str(e.get("time") or ""))
    version = metadata.get("generation") or metadata.get("resourceVersion") or ""
    return ForeignWrite(
        str(newest.get("manager") or ""), str(newest.get("time") or ""), str(version)
    )


Seen = ForeignWrite | None
UNSEEN: Literal["unseen"] = "unseen"


def drift_verdict(
    event: str | None, child: Mapping[str, Any], seen: Seen | Literal["unseen"]
) -> tuple[bool, Seen]:
    """Should a child watch event trigger a repair of its IMD? Returns it and what to remember.

    A deletion always does. Otherwise a foreign write not seen before does; the first sight of a
    child (the watch's initial listing) only records, because the reconcile on resume applies
    every child anyway.
    """
    if event == "DELETED":
        return True, None
    write = foreign_write(child)
    if seen == UNSEEN:
        return False, write
    return write is not None and write != seen, write


def plan_repair(
    owner: ImageModelDeployment,
    desired: Sequence[Manifest],
    observed: Mapping[ChildKey, Manifest],
    drifted: frozenset[ChildKey],
) -> ReconcilePlan:
    """Restore what drifted from an already reconciled generation: re-apply the children that
    are missing or were written by someone else (`drifted`); server-side apply takes back the
    operator's fields and leaves the others' alone. Owned children no longer wanted go too."""
    full = plan_reconcile(owner, desired, observed, handled_generation=owner.metadata.generation)

    def needed(step: Step) -> bool:
        if isinstance(step, Delete):
            return True
        name = step.name if isinstance(step, HandOverReplicas) else key(step.manifest)[1]
        kind = "Deployment" if isinstance(step, HandOverReplicas) else key(step.manifest)[0]
        return (kind, name) in drifted or (kind, name) not in observed

    steps = tuple(step for step in full.steps if needed(step))
    restored = [f"{key(s.manifest)[0]}/{key(s.manifest)[1]}" for s in steps if isinstance(s, Apply)]
    events = (Event("Normal", "Repaired", f"restored {', '.join(restored)}"),) if restored else ()
    return ReconcilePlan(steps=steps, events=events)
