"""Kopf handlers: parse, ask the pure core, apply through the adapter, report.

Imported by the entry point (`duotone_operator.cli`), which configures the operator through
`OperatorContext` in Kopf's memo.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from duotone_operator import metrics
from duotone_operator.api.v1alpha1 import GROUP, PLURAL, VERSION, ImageModelDeployment
from duotone_operator.api.validation import InvalidSpecError, parse_imd
from duotone_operator.autoscaler import Autoscaler
from duotone_operator.cluster import (
    ChildKey,
    Cluster,
    client_configuration,
    connection_info,
    is_transient,
    observe_deployment,
    replicas_managers,
    tier_observations,
)
from duotone_operator.health import WatchFreshness
from duotone_operator.policy.backoff import retry_delay
from duotone_operator.render import names
from duotone_operator.render.children import render_children
from duotone_operator.render.objects import RenderSettings
from duotone_operator.render.references import problems, required_references
from duotone_operator.render.status import (
    DeploymentObservation,
    Problem,
    compute_status,
    condition,
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
    context: OperatorContext, body: Mapping[str, Any], found_problems: list[Problem]
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
        metrics.RECONCILES.labels(result="problem").inc()
        raise
    except Exception:
        metrics.RECONCILES.labels(result="error").inc()
        raise
    metrics.RECONCILES.labels(result="success").inc()
    metrics.RECONCILE_SECONDS.observe(time.monotonic() - started)
    metrics.LAST_SUCCESS.set_to_current_time()


def _reconcile(
    context: OperatorContext,
    body: kopf.Body,
    patch: kopf.Patch,
    retry: int,
) -> None:
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
        context.cluster.post_event(body, "Warning", "InvalidSpec", message)
        raise kopf.PermanentError(message) from exc

    namespace = imd.metadata.namespace or "default"
    name = imd.metadata.name
    cluster = context.cluster
    try:
        missing = cluster.missing(required_references(imd), namespace)
        found_problems = problems(missing, namespace)
        if found_problems:
            patch.status.update(_refresh_status(context, body, found_problems))
            for problem in found_problems:
                cluster.post_event(body, "Warning", problem.reason, problem.message)
            delay = retry_delay(
                retry,
                base_seconds=context.retry_base_seconds,
                max_seconds=context.retry_max_seconds,
            )
            raise kopf.TemporaryError(
                f"{found_problems[0].message}; retrying in {delay:.0f}s", delay=delay
            )

        existing = cluster.children(namespace, name)
        desired, created = _apply_children(context, imd, existing)
        deleted = _delete_removed(cluster, imd, existing, desired)
    except ApiException as exc:
        message = f"API {exc.status}: {_api_message(exc)}"
        cluster.post_event(body, "Warning", "ApplyFailed", message)
        if is_transient(exc):
            # Conflicts clear in a moment; an overloaded or failing API server must not be
            # hammered: the same capped backoff as for impossible specs, from 1 s.
            delay = retry_delay(retry, base_seconds=1, max_seconds=context.retry_max_seconds)
            raise kopf.TemporaryError(f"{message}; retrying in {delay:.0f}s", delay=delay) from exc
        raise

    if created:
        cluster.post_event(
            body,
            "Normal",
            "Created",
            f"generation {imd.metadata.generation}: created {', '.join(created)}",
        )
    if deleted:
        cluster.post_event(body, "Normal", "Deleted", f"deleted {', '.join(deleted)}")
    handled = (body.get("status") or {}).get("observedGeneration")
    if handled != imd.metadata.generation and not created:
        cluster.post_event(
            body,
            "Normal",
            "Applied",
            f"generation {imd.metadata.generation}: {len(desired)} children applied",
        )
    log.info(
        "reconciled %s/%s generation %s: %d applied, %d created, %d deleted",
        namespace,
        name,
        imd.metadata.generation,
        len(desired),
        len(created),
        len(deleted),
    )
    patch.status.update(_refresh_status(context, body, []))


def _api_message(exc: ApiException) -> str:
    """The API server's own message (e.g. "failed to allocate a serviceIP: range is full")."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def _apply_children(
    context: OperatorContext, imd: ImageModelDeployment, existing: Mapping[ChildKey, Manifest]
) -> tuple[list[Manifest], list[str]]:
    """Apply every desired child; returns them and the names of those that are new."""
    name = imd.metadata.name
    existing_tiers = frozenset(
        tier
        for tier in imd.spec.tiers.present()
        if ("Deployment", names.tier_name(name, tier)) in existing
    )
    desired = render_children(imd, context.render, existing_tier_deployments=existing_tiers)
    created = []
    for child in desired:
        applied = context.cluster.apply(child)
        metrics.CHILDREN_APPLIED.labels(kind=child["kind"]).inc()
        key = (child["kind"], child["metadata"]["name"])
        if key not in existing:
            created.append(f"{key[0]}/{key[1]}")
        if child["kind"] == "Deployment" and names.TIER_LABEL in child["metadata"]["labels"]:
            _hand_replicas_to_autoscaler(context.cluster, applied)
    return desired, created


def _delete_removed(
    cluster: Cluster,
    imd: ImageModelDeployment,
    existing: Mapping[ChildKey, Manifest],
    desired: list[Manifest],
) -> list[str]:
    """Delete children this IMD owns that are no longer desired (a removed tier's)."""
    desired_keys = {(c["kind"], c["metadata"]["name"]) for c in desired}
    deleted = []
    for key, child in existing.items():
        owners = child["metadata"].get("ownerReferences") or []
        owned = any(o.get("uid") == imd.metadata.uid for o in owners)
        if key not in desired_keys and owned and cluster.delete(child):
            metrics.CHILDREN_DELETED.labels(kind=key[0]).inc()
            deleted.append(f"{key[0]}/{key[1]}")
    return deleted


def _hand_replicas_to_autoscaler(cluster: Cluster, deployment: Manifest) -> None:
    """Make sure someone other than the reconciler owns spec.replicas.

    The reconciler sets replicas only when it creates a tier Deployment; its later applies omit
    the field. If no other manager owned it by then, the API server would reset it to 1, so the
    autoscaler's field manager co-owns it from the start (idempotent: a crash in between is
    repaired on the next reconcile). `kubectl scale` or the autoscaler then change it freely.
    """
    if replicas_managers(deployment) - {names.FIELD_MANAGER}:
        return
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": deployment["metadata"]["name"],
                "namespace": deployment["metadata"]["namespace"],
            },
            "spec": {"replicas": deployment["spec"]["replicas"]},
        },
        manager=names.SCALE_FIELD_MANAGER,
    )


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
    observation = observe_deployment(dict(body))
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
    except ApiException as exc:
        if exc.status != 404:
            logger.warning("status refresh of %s/%s failed: %s", namespace, owner, exc.reason)


@kopf.on.event(GROUP, VERSION, PLURAL)
def watch_delivered(body: kopf.Body, type: str, memo: Any, **_: Any) -> None:  # noqa: A002
    """Record what the watch delivers, for the liveness probe (`health.WatchFreshness`)."""
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
    except (ApiException, OSError) as exc:
        # The next tick retries; nothing was decided on half a picture.
        namespace = body.get("metadata", {}).get("namespace", "")
        metrics.SCALE_ERRORS.labels(namespace).inc()
        log.warning("autoscaler round for %s failed: %s", body.get("metadata", {}).get("name"), exc)


def register_autoscaler(interval_seconds: float) -> None:
    """Run `autoscale` for every IMD every `interval_seconds` (registered at start-up, because
    the interval is a command-line setting)."""
    kopf.timer(GROUP, VERSION, PLURAL, id="autoscale", interval=interval_seconds, sharp=True)(
        autoscale
    )
