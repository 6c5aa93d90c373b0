"""Kopf handlers: parse, ask the pure core for a plan, execute it through the adapter, report.

Imported by the entry point (`duotone_operator.cli`), which configures the operator through
`OperatorContext` in Kopf's memo. Every decision is in `plan`, `render` and `policy`; the
handlers call the `Cluster` Protocol only, so tests run them against an in-memory fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from duotone_contracts.api.v1alpha1 import GROUP, PLURAL, VERSION, ImageModelDeployment, TierName
from duotone_contracts.api.validation import InvalidSpecError, parse_imd
from duotone_operator.adapters import telemetry
from duotone_operator.adapters.child_index import ChildIndex
from duotone_operator.adapters.cluster import Cluster, ClusterError
from duotone_operator.adapters.kubernetes import client_configuration, connection_info
from duotone_operator.autoscaler import Autoscaler
from duotone_operator.plan import (
    UNSEEN,
    Apply,
    ChildKey,
    Delete,
    HandOverReplicas,
    ReconcilePlan,
    Seen,
    desired_children,
    drift_verdict,
    plan_api_failure,
    plan_problems,
    plan_reconcile,
    plan_repair,
)
from duotone_operator.policy.freshness import WatchFreshness
from duotone_operator.render import names
from duotone_operator.render.children import CHILD_KINDS, CHILD_PLURALS
from duotone_operator.render.objects import RenderSettings
from duotone_operator.render.references import carried_problems, problems, required_references
from duotone_operator.render.status import (
    DeploymentObservation,
    Problem,
    compute_status,
    condition,
    observe_deployment,
    refreshed_status,
    tier_observations,
)

Manifest = dict[str, Any]
log = logging.getLogger("duotone.operator")


@dataclass
class OperatorContext:
    """Everything the handlers share; set once by the entry point."""

    cluster: Cluster
    kubeconfig: str | None = None
    render: RenderSettings = field(default_factory=RenderSettings)
    freshness: WatchFreshness = field(default_factory=WatchFreshness)
    observed: dict[tuple[str, str], DeploymentObservation] = field(default_factory=dict)
    """Last observation per child Deployment, so status refreshes skip events that change
    nothing the status shows (most Deployment events: timestamps, conditions)."""
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 300.0
    watch_server_timeout: int = 300
    workers: int = 8
    autoscaler: Autoscaler | None = None
    """None when autoscaling is switched off for the whole operator."""
    drift_seen: dict[tuple[str, str, str], Seen] = field(default_factory=dict)
    """Per child ((kind, namespace, name)): the foreign write last seen (`plan.drift_verdict`)."""
    stale_status: set[tuple[str, str]] = field(default_factory=set)
    """IMDs whose Deployments moved since their status was last refreshed."""
    drifted: dict[tuple[str, str], set[ChildKey]] = field(default_factory=dict)
    """IMDs waiting for a repair, with the children that drifted."""
    locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _locks_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    imds: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    """The latest body of every live IMD the watch delivered ((namespace, name) -> body): what
    the autoscaler loop and drift repair work from, without listing."""
    children: ChildIndex = field(default_factory=ChildIndex)
    """The watches' view of every child (the cluster adapter reads it instead of listing)."""

    def imd_bodies(self) -> list[Mapping[str, Any]]:
        return list(self.imds.values())

    def lock(self, namespace: str, name: str) -> threading.Lock:
        """One lock per IMD: a reconcile and a repair of the same IMD never interleave."""
        with self._locks_lock:
            return self.locks.setdefault((namespace, name), threading.Lock())


def _context(memo: Any) -> OperatorContext:
    context: OperatorContext = memo["context"]
    return context


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    context = _context(memo)
    # A watch that never times out can die silently; these make Kopf re-establish it.
    settings.watching.server_timeout = context.watch_server_timeout
    settings.watching.client_timeout = context.watch_server_timeout + 30
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Our events are posted explicitly (Cluster.post_event); Kopf posts only its own failures.
    settings.posting.level = logging.ERROR
    settings.scanning.disabled = True  # no CRD watching: one less permission
    for api_version, kind in CHILD_KINDS:
        # Children are watched with a server-side selector: the operator's own objects only.
        settings.watching.label_selectors[api_version, CHILD_PLURALS[kind]] = (
            f"app.kubernetes.io/managed-by={names.MANAGED_BY}"
        )
    settings.execution.max_workers = context.workers


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """Kopf authenticates exactly as the adapter does (re-read on expiry: tokens rotate)."""
    return connection_info(client_configuration(_context(memo).kubeconfig))


def _now() -> datetime:
    return datetime.now(UTC)


def _observe(
    context: OperatorContext, imd: ImageModelDeployment
) -> tuple[dict[TierName, DeploymentObservation], DeploymentObservation | None]:
    """The tier and router Deployments' readiness (one list call)."""
    namespace = imd.metadata.namespace or "default"
    children = context.cluster.deployments(namespace, imd.metadata.name)
    router = children.get(("Deployment", names.router_name(imd.metadata.name)))
    return tier_observations(children), observe_deployment(router) if router else None


def _reconciled_status(
    context: OperatorContext,
    imd: ImageModelDeployment,
    previous: Mapping[str, Any] | None,
    found_problems: Sequence[Problem],
) -> Manifest:
    """The status a reconcile writes: observedGeneration moves only when nothing stood in the
    way of applying this generation."""
    tiers, router = _observe(context, imd)
    return compute_status(
        imd,
        tiers=tiers,
        router=router,
        problems=found_problems,
        previous=previous,
        now=_now(),
        applied=not found_problems,
    )


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(
    body: kopf.Body,
    patch: kopf.Patch,
    retry: int,
    memo: Any,
    **_: Any,
) -> None:
    """Make the children match the spec, then report status."""
    context = _context(memo)
    context.children.synced = True  # Kopf runs no handler before every index is listed
    started = time.monotonic()
    metadata = body.get("metadata", {})
    try:
        with context.lock(metadata.get("namespace", ""), metadata.get("name", "")):
            _reconcile(context, body, patch, retry)
    except kopf.TemporaryError:
        telemetry.RECONCILES.labels(result="problem").inc()
        raise
    except Exception:
        telemetry.RECONCILES.labels(result="error").inc()
        raise
    telemetry.RECONCILES.labels(result="success").inc()
    telemetry.RECONCILE_SECONDS.observe(time.monotonic() - started)
    telemetry.LAST_SUCCESS.set_to_current_time()


def _reconcile(
    context: OperatorContext,
    body: Mapping[str, Any],
    patch: kopf.Patch,
    retry: int,
) -> None:
    cluster = context.cluster
    try:
        imd = parse_imd(body)
    except InvalidSpecError as exc:
        # Admission should have refused it (an older CRD?): say so once, do not retry.
        message = str(exc)
        patch.status["conditions"] = [
            condition(
                "Ready",
                status=False,
                reason="InvalidSpec",
                message=message,
                generation=body["metadata"].get("generation"),
                previous={},
                now=_now(),
            )
        ]
        cluster.post_event(body, "Warning", "InvalidSpec", message)
        raise kopf.PermanentError(message) from exc

    namespace = imd.metadata.namespace or "default"
    previous = body.get("status")
    if not (previous or {}).get("conditions"):
        # First sight: conditions exist from the first write on, whatever happens next.
        patch.status.update(
            compute_status(
                imd,
                tiers={},
                router=None,
                problems=(),
                previous=previous,
                now=_now(),
                applied=False,
            )
        )
    try:
        missing = cluster.missing(required_references(imd), namespace)
        found = problems(missing, namespace)
        if found:
            plan = plan_problems(
                found,
                retry=retry,
                base_seconds=context.retry_base_seconds,
                max_seconds=context.retry_max_seconds,
            )
        else:
            observed = cluster.children(namespace, imd.metadata.name)
            plan = plan_reconcile(
                imd,
                desired_children(imd, context.render, observed),
                observed,
                handled_generation=(body.get("status") or {}).get("observedGeneration"),
            )
        execute(cluster, body, plan)
    except ClusterError as exc:
        event, again = plan_api_failure(
            exc.status, exc.message, retry=retry, max_seconds=context.retry_max_seconds
        )
        with contextlib.suppress(ClusterError):  # the API may be what failed
            cluster.post_event(body, event.type, event.reason, event.message)
        if again is not None:
            raise kopf.TemporaryError(again.message, delay=again.delay_seconds) from exc
        raise
    patch.status.update(_reconciled_status(context, imd, previous, plan.problems))
    if plan.retry is not None:
        raise kopf.TemporaryError(plan.retry.message, delay=plan.retry.delay_seconds)
    log.info(
        "reconciled %s/%s generation %s: %d applied, %d deleted",
        namespace,
        imd.metadata.name,
        imd.metadata.generation,
        plan.count(Apply),
        plan.count(Delete),
    )


def execute(cluster: Cluster, body: Mapping[str, Any], plan: ReconcilePlan) -> None:
    """Carry out the plan's steps in order, then post its events."""
    for step in plan.steps:
        if isinstance(step, Apply):
            cluster.apply(step.manifest)
            telemetry.CHILDREN_APPLIED.labels(kind=step.manifest["kind"]).inc()
        elif isinstance(step, HandOverReplicas):
            cluster.apply(step.manifest(), manager=names.SCALE_FIELD_MANAGER)
        elif cluster.delete(step.manifest):
            telemetry.CHILDREN_DELETED.labels(kind=step.manifest["kind"]).inc()
    for event in plan.events:
        cluster.post_event(body, event.type, event.reason, event.message)


@kopf.on.event(
    "apps", "v1", "deployments", labels={"app.kubernetes.io/managed-by": names.MANAGED_BY}
)
async def deployment_changed(
    body: kopf.Body,
    type: str,  # noqa: A002 - Kopf's name for the watch event type
    namespace: str | None,
    memo: Any,
    **_: Any,
) -> None:
    """A child Deployment moved (pods became ready, a rollout finished): queue a status refresh
    of its IMD (`refresh_forever` writes it; a burst of events becomes one refresh)."""
    owner = (body.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/instance")
    if not owner or not namespace:
        return
    context = _context(memo)
    key = (namespace, body["metadata"]["name"])
    if type == "DELETED":
        context.observed.pop(key, None)
        return
    observation = observe_deployment(body)
    if context.observed.get(key) == observation:
        return
    context.observed[key] = observation
    context.stale_status.add((namespace, owner))


def refresh_status(context: OperatorContext, namespace: str, name: str) -> None:
    """Rewrite one IMD's status from its Deployments, retrying on a conflict."""
    try:
        for _attempt in range(REFRESH_ATTEMPTS):
            if _refresh_once(context, namespace, name):
                return
    except ClusterError as exc:
        if exc.status != 404:
            log.warning("status refresh of %s/%s failed: %s", namespace, name, exc.message)


async def refresh_forever(context: OperatorContext, interval_seconds: float = 1.0) -> None:
    """Every `interval_seconds`, refresh the status of the IMDs whose Deployments moved, at most
    `context.workers` at a time."""
    limit = asyncio.Semaphore(max(1, context.workers))

    async def one(namespace: str, name: str) -> None:
        async with limit:
            await asyncio.to_thread(refresh_status, context, namespace, name)

    while True:
        await asyncio.sleep(interval_seconds)
        pending, context.stale_status = context.stale_status, set()
        await asyncio.gather(*(one(namespace, name) for namespace, name in sorted(pending)))


REFRESH_ATTEMPTS = 3
"""A refresh is written only over the IMD version it was computed from; a conflict (a reconcile
wrote in between) means read again."""


def _refresh_once(context: OperatorContext, namespace: str, name: str) -> bool:
    """One read-compute-write of the status; False when the IMD moved on in between."""
    body = context.cluster.get_imd(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return True
    try:
        imd = parse_imd(body)
    except InvalidSpecError:
        return True
    tiers, router = _observe(context, imd)
    status = refreshed_status(
        imd,
        tiers=tiers,
        router=router,
        carried=carried_problems(body.get("status")),
        previous=body.get("status"),
        now=_now(),
    )
    try:
        context.cluster.patch_imd_status(
            namespace, name, status, resource_version=body["metadata"].get("resourceVersion")
        )
    except ClusterError as exc:
        if exc.status == 409:
            return False
        raise
    return True


async def child_changed(
    body: kopf.Body,
    type: str | None,  # noqa: A002 - Kopf's name for the watch event type
    namespace: str | None,
    memo: Any,
    **_: Any,
) -> None:
    """A child was deleted or written by someone else: queue a repair of its IMD. (Async: no
    I/O, so it runs on the event loop instead of queueing for a worker thread.)"""
    metadata = body.get("metadata", {})
    owner = (metadata.get("labels") or {}).get("app.kubernetes.io/instance")
    if not owner or not namespace:
        return
    context = _context(memo)
    child_key: ChildKey = (str(body.get("kind", "")), str(metadata.get("name", "")))
    seen_key = (child_key[0], namespace, child_key[1])
    repair, seen = drift_verdict(type, body, context.drift_seen.get(seen_key, UNSEEN))
    if type == "DELETED":
        context.children.gone(body)
        context.drift_seen.pop(seen_key, None)
    else:
        context.drift_seen[seen_key] = seen
    if repair and (namespace, owner) in context.imds:
        context.drifted.setdefault((namespace, owner), set()).add(child_key)


def repair(context: OperatorContext, namespace: str, name: str, drifted: set[ChildKey]) -> None:
    """Restore the drifted children of an IMD whose current generation is reconciled (a newer
    generation is the reconcile's to apply, whole)."""
    with context.lock(namespace, name):
        body = context.cluster.get_imd(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        if (body.get("status") or {}).get("observedGeneration") != body["metadata"].get(
            "generation"
        ):
            return
        try:
            imd = parse_imd(body)
        except InvalidSpecError:
            return
        observed = context.cluster.children(namespace, name)
        plan = plan_repair(
            imd, desired_children(imd, context.render, observed), observed, frozenset(drifted)
        )
        execute(context.cluster, body, plan)
    if plan.steps:
        telemetry.REPAIRS.inc()
        log.info("repaired %s/%s: %d steps", namespace, name, len(plan.steps))


async def repair_forever(context: OperatorContext, interval_seconds: float = 1.0) -> None:
    """Every `interval_seconds`, repair the IMDs whose children drifted (a burst of events for
    one IMD becomes one repair). A failed repair is queued again for the next round."""
    while True:
        await asyncio.sleep(interval_seconds)
        pending, context.drifted = context.drifted, {}
        for (namespace, name), children in pending.items():
            try:
                await asyncio.to_thread(repair, context, namespace, name, children)
            except ClusterError as exc:
                log.warning("repair of %s/%s failed: %s", namespace, name, exc.message)
                context.drifted.setdefault((namespace, name), set()).update(children)


async def child_indexed(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Keep the index of children current (listed, added, modified; deletions reach
    `child_changed`). A Kopf index handler, so that no handler runs before every kind of child
    was listed; it returns nothing, so Kopf's own index stays empty."""
    _context(memo).children.seen(body)


def register_child_watches() -> None:
    """Watch every kind of child (server-side label selector, see `configure`)."""
    for api_version, kind in CHILD_KINDS:
        kopf.index(api_version, CHILD_PLURALS[kind], id=f"children-{kind}")(child_indexed)
        kopf.on.event(api_version, CHILD_PLURALS[kind], id=f"drift-{kind}")(child_changed)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def watch_delivered(body: kopf.Body, type: str, memo: Any, **_: Any) -> None:  # noqa: A002
    """Record what the watch delivers: versions for the liveness probe (`policy.freshness`),
    bodies for the autoscaler loop and drift repair."""
    metadata = body.get("metadata", {})
    context = _context(memo)
    context.children.synced = True  # Kopf runs no handler before every index is listed
    if metadata.get("uid") and metadata.get("resourceVersion"):
        context.freshness.delivered(
            metadata["uid"], metadata["resourceVersion"], deleted=type == "DELETED"
        )
    key = (metadata.get("namespace", ""), metadata.get("name", ""))
    if type == "DELETED" or metadata.get("deletionTimestamp"):
        context.imds.pop(key, None)
        if context.autoscaler is not None:
            context.autoscaler.forget(*key)
    else:
        context.imds[key] = dict(body)
