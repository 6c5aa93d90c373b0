"""Kopf handlers: parse, ask the pure core for a plan, execute it through the adapter, report.

Imported by the entry point (`duotone_operator.cli`), which configures the operator through
`OperatorContext` in Kopf's memo. Every decision is in `plan`, `render` and `policy`; the
handlers call the `Cluster` Protocol only, so tests run them against an in-memory fake.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from duotone_contracts.api.v1alpha1 import GROUP, PLURAL, VERSION
from duotone_contracts.api.validation import InvalidSpecError, parse_imd
from duotone_operator.adapters import telemetry
from duotone_operator.adapters.cluster import Cluster, ClusterError
from duotone_operator.adapters.kubernetes import client_configuration, connection_info
from duotone_operator.autoscaler import Autoscaler
from duotone_operator.plan import (
    Apply,
    Delete,
    HandOverReplicas,
    ReconcilePlan,
    desired_children,
    plan_api_failure,
    plan_problems,
    plan_reconcile,
)
from duotone_operator.policy.freshness import WatchFreshness
from duotone_operator.render import names
from duotone_operator.render.objects import RenderSettings
from duotone_operator.render.references import problems, required_references
from duotone_operator.render.status import (
    DeploymentObservation,
    Problem,
    compute_status,
    condition,
    observe_deployment,
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
    settings.execution.max_workers = context.workers


@kopf.on.login()
def login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """Kopf authenticates exactly as the adapter does (re-read on expiry: tokens rotate)."""
    return connection_info(client_configuration(_context(memo).kubeconfig))


def _now() -> datetime:
    return datetime.now(UTC)


def _refresh_status(
    context: OperatorContext, body: Mapping[str, Any], found_problems: Sequence[Problem]
) -> Manifest:
    imd = parse_imd(body)
    namespace = imd.metadata.namespace or "default"
    children = context.cluster.deployments(namespace, imd.metadata.name)
    router = children.get(("Deployment", names.router_name(imd.metadata.name)))
    return compute_status(
        imd,
        tiers=tier_observations(children),
        router=observe_deployment(router) if router else None,
        problems=found_problems,
        previous=body.get("status"),
        now=_now(),
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
    started = time.monotonic()
    try:
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
        cluster.post_event(body, event.type, event.reason, event.message)
        if again is not None:
            raise kopf.TemporaryError(again.message, delay=again.delay_seconds) from exc
        raise
    patch.status.update(_refresh_status(context, body, plan.problems))
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
def deployment_changed(
    body: kopf.Body,
    type: str,  # noqa: A002 - Kopf's name for the watch event type
    namespace: str | None,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """A child Deployment moved (pods became ready, a rollout finished): refresh the status."""
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
    imd = context.cluster.get_imd(namespace, owner)
    if imd is None or imd["metadata"].get("deletionTimestamp"):
        return
    try:
        context.cluster.patch_imd_status(namespace, owner, _refresh_status(context, imd, []))
    except InvalidSpecError:
        return
    except ClusterError as exc:
        if exc.status != 404:
            logger.warning("status refresh of %s/%s failed: %s", namespace, owner, exc.message)


@kopf.on.event(GROUP, VERSION, PLURAL)
def watch_delivered(body: kopf.Body, type: str, memo: Any, **_: Any) -> None:  # noqa: A002
    """Record what the watch delivers, for the liveness probe (`policy.freshness`)."""
    metadata = body.get("metadata", {})
    context = _context(memo)
    if metadata.get("uid") and metadata.get("resourceVersion"):
        context.freshness.delivered(
            metadata["uid"], metadata["resourceVersion"], deleted=type == "DELETED"
        )
    if type == "DELETED" and context.autoscaler is not None:
        context.autoscaler.forget(metadata.get("namespace", ""), metadata.get("name", ""))


async def autoscale(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Timer: one autoscaler round for this IMD (`duotone_operator.autoscaler`)."""
    autoscaler = _context(memo).autoscaler
    if autoscaler is None:
        return
    try:
        await autoscaler.tick(body, time.time())
    except (ClusterError, OSError) as exc:
        # The next tick retries; nothing was decided on half a picture.
        namespace = body.get("metadata", {}).get("namespace", "")
        telemetry.SCALE_ERRORS.labels(namespace).inc()
        log.warning("autoscaler round for %s failed: %s", body.get("metadata", {}).get("name"), exc)


def register_autoscaler(interval_seconds: float) -> None:
    """Run `autoscale` for every IMD every `interval_seconds` (registered at start-up, because
    the interval is a command-line setting)."""
    kopf.timer(GROUP, VERSION, PLURAL, id="autoscale", interval=interval_seconds, sharp=True)(
        autoscale
    )
