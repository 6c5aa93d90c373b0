"""The Kopf handlers and the autoscaler's shell, run against the in-memory FakeCluster.

The same handlers run against the real API server in tests/e2e/test_operator.py; here each
case takes milliseconds, so every path of the shell is covered.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from duotone_operator import handlers
from duotone_operator.adapters.cluster import ClusterError
from duotone_operator.autoscaler import Autoscaler
from duotone_operator.handlers import OperatorContext
from duotone_operator.policy.autoscaling import TierMetrics
from duotone_operator.render import names
from tests.fakes.cluster import FakeCluster
from tests.fakes.metrics import FakeMetricSource
from tests.support.builders import imd

pytestmark = pytest.mark.unit

NS = "images"


def _manifest(*tiers: str, source: str = "builtin://tiny") -> dict[str, Any]:
    builder = imd("sd")
    for tier in tiers:
        builder = builder.tier(tier, source=source, gpus=0, min=1, max=4)
    manifest = builder.build()
    manifest["metadata"]["namespace"] = NS
    return manifest


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def context(cluster: FakeCluster) -> OperatorContext:
    return OperatorContext(cluster=cluster)


def reconcile(context: OperatorContext, body: dict[str, Any], retry: int = 0) -> kopf.Patch:
    """One reconcile, with its status patch merged into the stored IMD as Kopf would."""
    patch = kopf.Patch()
    try:
        handlers.reconcile(body=body, patch=patch, retry=retry, memo={"context": context})
    finally:
        cluster = context.cluster
        assert isinstance(cluster, FakeCluster)
        meta = body["metadata"]
        if "status" in patch:
            cluster.patch_imd_status(meta["namespace"], meta["name"], dict(patch["status"]))
    return patch


def deployment_event(context: OperatorContext, deployment: Any) -> None:
    """A Deployment watch event, then the refresh it queued (as `refresh_forever` would)."""
    asyncio.run(
        handlers.deployment_changed(
            body=deployment, type="MODIFIED", namespace=NS, memo={"context": context}
        )
    )
    pending, context.stale_status = context.stale_status, set()
    for namespace, name in pending:
        handlers.refresh_status(context, namespace, name)


def _reasons(cluster: FakeCluster) -> list[str]:
    return [event.reason for event in cluster.events]


def _replicas(cluster: FakeCluster, name: str) -> int:
    deployment = cluster.get("Deployment", NS, name)
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


def _reasons_by_condition(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["reason"] for c in status["conditions"]}


def test_create_applies_every_child_hands_replicas_over_and_reports_status(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    body = cluster.create_imd(_manifest("efficient", "flagship"))
    reconcile(context, body)
    kinds = sorted({kind for kind, _, _ in cluster.objects})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    for tier in ("sd-efficient", "sd-flagship"):
        assert _replicas(cluster, tier) == 1
        assert names.SCALE_FIELD_MANAGER in cluster.managers_of_replicas(NS, tier)
    assert _reasons(cluster) == ["Created"]
    status = cluster.imd(NS, "sd")["status"]
    assert status["observedGeneration"] == 1
    assert status["endpoint"] == "http://sd-router.images.svc:8080"
    assert _reasons_by_condition(status)["Ready"] == "TiersNotReady"


def test_spec_change_applies_the_new_config_and_keeps_the_autoscalers_replicas(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    body = cluster.create_imd(_manifest("efficient"))
    reconcile(context, body)
    before = cluster.get("ConfigMap", NS, "sd-efficient-config")
    cluster.scale_deployment(NS, "sd-efficient", 3)  # the autoscaler's doing
    spec = cluster.imd(NS, "sd")["spec"]
    spec["tiers"]["efficient"]["defaults"] = {"steps": 2}
    reconcile(context, cluster.update_imd_spec(NS, "sd", spec))
    after = cluster.get("ConfigMap", NS, "sd-efficient-config")
    assert before is not None
    assert after is not None
    assert after["data"] != before["data"]
    assert '"steps": 2' in after["data"]["tier.json"]
    assert _replicas(cluster, "sd-efficient") == 3, "a reconcile never resets replicas"
    assert _reasons(cluster) == ["Created", "Applied"]
    assert cluster.imd(NS, "sd")["status"]["observedGeneration"] == 2


def test_removed_tier_is_deleted_and_the_router_stops_routing_to_it(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    body = cluster.create_imd(_manifest("efficient", "flagship"))
    reconcile(context, body)
    spec = cluster.imd(NS, "sd")["spec"]
    del spec["tiers"]["flagship"]
    reconcile(context, cluster.update_imd_spec(NS, "sd", spec))
    left = {(kind, name) for kind, _, name in cluster.objects if "flagship" in name}
    assert left == set()
    table = cluster.get("ConfigMap", NS, "sd-router-config")
    assert table is not None
    assert '"flagship"' not in table["data"]["router.json"]
    assert _reasons(cluster) == ["Created", "Deleted", "Applied"]
    assert "Deployment/sd-flagship" in cluster.events[1].message
    assert "flagship" not in cluster.imd(NS, "sd")["status"]["tiers"]


def test_missing_reference_touches_nothing_warns_and_retries_with_backoff(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    body = cluster.create_imd(_manifest("efficient", source="pvc://models/sd"))
    with pytest.raises(kopf.TemporaryError) as raised:
        reconcile(context, body, retry=2)
    assert raised.value.delay == 20.0  # base 5 s, third try
    assert not cluster.objects, "no child before the claim exists"
    assert [(e.type, e.reason) for e in cluster.events] == [
        ("Warning", "PersistentVolumeClaimNotFound")
    ]
    status = cluster.imd(NS, "sd")["status"]
    assert _reasons_by_condition(status)["Ready"] == "PersistentVolumeClaimNotFound"
    cluster.existing.add(("PersistentVolumeClaim", NS, "models"))
    reconcile(context, cluster.imd(NS, "sd"))
    assert cluster.get("Deployment", NS, "sd-efficient") is not None
    assert _reasons(cluster)[-1] == "Created"


def test_child_deleted_out_of_band_comes_back_on_the_next_reconcile(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    body = cluster.create_imd(_manifest("efficient"))
    reconcile(context, body)
    cluster.scale_deployment(NS, "sd-efficient", 2)
    cluster.remove("Service", NS, "sd-efficient")
    cluster.remove("ConfigMap", NS, "sd-router-config")
    reconcile(context, cluster.imd(NS, "sd"))
    assert cluster.get("Service", NS, "sd-efficient") is not None
    assert cluster.get("ConfigMap", NS, "sd-router-config") is not None
    assert cluster.events[-1].message == (
        "generation 1: created ConfigMap/sd-router-config, Service/sd-efficient"
    )
    assert _replicas(cluster, "sd-efficient") == 2


def test_tier_deployment_left_without_the_autoscaler_keeps_its_replicas(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    """A crash after the Deployment was created but before its replicas were handed over."""
    body = cluster.create_imd(_manifest("efficient"))
    reconcile(context, body)
    stored = cluster.objects[("Deployment", NS, "sd-efficient")]
    del stored.applied[names.SCALE_FIELD_MANAGER]
    stored.applied[names.FIELD_MANAGER]["spec"]["replicas"] = 3
    assert cluster.managers_of_replicas(NS, "sd-efficient") == {names.FIELD_MANAGER}
    reconcile(context, cluster.imd(NS, "sd"))
    assert _replicas(cluster, "sd-efficient") == 3
    assert names.SCALE_FIELD_MANAGER in cluster.managers_of_replicas(NS, "sd-efficient")


@pytest.mark.parametrize(
    ("status", "raised"),
    [
        pytest.param(409, kopf.TemporaryError, id="conflict: retried soon"),
        pytest.param(403, ClusterError, id="forbidden: an error for Kopf's backoff"),
    ],
)
def test_api_errors_post_apply_failed(
    cluster: FakeCluster, context: OperatorContext, status: int, raised: type[Exception]
) -> None:
    body = cluster.create_imd(_manifest("efficient"))
    cluster.fail("apply", status, "the server says no")
    with pytest.raises(raised):
        reconcile(context, body)
    assert cluster.events[-1].reason == "ApplyFailed"
    assert cluster.events[-1].message.startswith(f"API {status}: the server says no")


def test_invalid_spec_is_reported_once_and_not_retried(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    manifest = _manifest("efficient")
    manifest["spec"]["tiers"]["efficient"]["replicas"] = {"min": 5, "max": 2}
    body = cluster.create_imd(manifest)
    with pytest.raises(kopf.PermanentError):
        reconcile(context, body)
    assert not cluster.objects
    assert [(e.type, e.reason) for e in cluster.events] == [("Warning", "InvalidSpec")]
    condition = cluster.imd(NS, "sd")["status"]["conditions"][0]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Ready",
        "False",
        "InvalidSpec",
    )
    assert "replicas.min" in condition["message"]


def test_a_deployment_becoming_ready_refreshes_the_status(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    body = cluster.create_imd(_manifest("efficient"))
    reconcile(context, body)
    for name in ("sd-efficient", "sd-router"):
        desired = _replicas(cluster, name)
        cluster.set_deployment_status(
            NS,
            name,
            replicas=desired,
            readyReplicas=desired,
            updatedReplicas=desired,
            observedGeneration=1,
        )
        deployment_event(context, cluster.get("Deployment", NS, name))
    status = cluster.imd(NS, "sd")["status"]
    assert _reasons_by_condition(status)["Ready"] == "AllTiersReady"
    assert status["tiers"]["efficient"]["readiness"] == "1/1"


def test_autoscaler_tick_scales_a_busy_tier_and_reports_it(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    body = cluster.create_imd(_manifest("efficient"))
    reconcile(context, body)
    now = 1000.0
    source = FakeMetricSource(
        {"efficient": TierMetrics(at=now, queued=10, executing=2, p50_latency_ms=100)}
    )
    autoscaler = Autoscaler(cluster, sources=lambda _: source)
    decisions = asyncio.run(autoscaler.tick(cluster.imd(NS, "sd"), now))
    assert decisions["efficient"].replicas == 3  # 12 / 4 per replica
    assert _replicas(cluster, "sd-efficient") == 3
    assert cluster.events[-1].reason == "ScaledUp"
    assert "scale up 1 -> 3: queue 12" in cluster.events[-1].message
    tier_status = cluster.imd(NS, "sd")["status"]["tiers"]["efficient"]
    assert (tier_status["desiredReplicas"], tier_status["queueDepth"]) == (3, 12.0)
    assert [t.tier_service for t in source.reads] == ["sd-efficient"]


def test_autoscaler_holds_the_size_when_metrics_are_missing(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    body = cluster.create_imd(_manifest("efficient"))
    reconcile(context, body)
    cluster.scale_deployment(NS, "sd-efficient", 2)
    autoscaler = Autoscaler(cluster, sources=lambda _: FakeMetricSource())
    before = len(cluster.calls)
    decisions = asyncio.run(autoscaler.tick(cluster.imd(NS, "sd"), 1000.0))
    assert decisions["efficient"].held
    assert _replicas(cluster, "sd-efficient") == 2
    assert "scale_deployment" not in cluster.calls[before:]


def _ready_everywhere(cluster: FakeCluster, context: OperatorContext) -> None:
    """Every Deployment of `sd` reports its pods ready, through the Deployment-event path."""
    for name in ("sd-efficient", "sd-router"):
        desired = _replicas(cluster, name)
        cluster.set_deployment_status(
            NS,
            name,
            replicas=desired,
            readyReplicas=desired,
            updatedReplicas=desired,
            observedGeneration=1,
        )
        deployment_event(context, cluster.get("Deployment", NS, name))


def test_a_missing_claim_keeps_ready_false_and_the_generation_unobserved_through_refreshes(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    reconcile(context, cluster.create_imd(_manifest("efficient")))
    _ready_everywhere(cluster, context)
    assert _reasons_by_condition(cluster.imd(NS, "sd")["status"])["Ready"] == "AllTiersReady"

    spec = cluster.imd(NS, "sd")["spec"]
    spec["tiers"]["efficient"]["model"]["source"] = "pvc://models/sd"
    with pytest.raises(kopf.TemporaryError):
        reconcile(context, cluster.update_imd_spec(NS, "sd", spec))
    for replicas in (2, 3, 1):  # kubectl scale: Deployment events, each a status refresh
        cluster.scale_deployment(NS, "sd-efficient", replicas)
        context.observed.clear()
        _ready_everywhere(cluster, context)
        status = cluster.imd(NS, "sd")["status"]
        assert status["observedGeneration"] == 1
        assert _reasons_by_condition(status)["Ready"] == "PersistentVolumeClaimNotFound"
        assert status["tiers"]["efficient"]["readiness"] == f"{replicas}/{replicas}"

    cluster.existing.add(("PersistentVolumeClaim", NS, "models"))
    reconcile(context, cluster.imd(NS, "sd"))
    status = cluster.imd(NS, "sd")["status"]
    assert status["observedGeneration"] == 2
    assert _reasons_by_condition(status)["Ready"] != "PersistentVolumeClaimNotFound"


def test_conditions_are_written_even_when_the_first_reconcile_fails(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    body = cluster.create_imd(_manifest("efficient"))
    cluster.fail("missing", 503)
    with pytest.raises(kopf.TemporaryError):
        reconcile(context, body)
    status = cluster.imd(NS, "sd")["status"]
    assert _reasons_by_condition(status)["Ready"] == "Creating"
    assert "observedGeneration" not in status


def test_the_autoscaler_loop_ticks_every_imd_on_its_cadence_until_cancelled(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    for name in ("a", "b"):
        manifest = _manifest("efficient")
        manifest["metadata"]["name"] = name
        reconcile(context, cluster.create_imd(manifest))
    ticked: list[tuple[str, float]] = []

    class Recording(Autoscaler):
        async def tick(self, body: Any, now: float) -> Any:
            ticked.append((body["metadata"]["name"], now))
            if body["metadata"]["name"] == "b":
                raise ClusterError(503, "injected")  # counted and logged, the loop goes on
            return {}

    autoscaler = Recording(cluster)
    bodies = [cluster.imd(NS, "a"), cluster.imd(NS, "b")]

    async def run_until_three_rounds() -> None:
        task = asyncio.create_task(autoscaler.run(lambda: bodies, 0.01, clock=lambda: 7.0))
        for _ in range(500):
            if sum(1 for name, _ in ticked if name == "a") >= 3:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_until_three_rounds())
    assert sum(1 for name, _ in ticked if name == "a") >= 3
    assert sum(1 for name, _ in ticked if name == "b") >= 3, "a failing IMD is retried"
    assert {now for _, now in ticked} == {7.0}


def test_no_handler_makes_kopf_put_a_finalizer_on_an_imd() -> None:
    """Timers, daemons and non-optional deletion handlers make Kopf add its finalizer, and an
    IMD could then not be deleted while the operator is down (Kopf's registry is the witness;
    tests/e2e/test_operator.py checks the live objects)."""
    registry = kopf.get_default_registry()
    handlers.register_child_watches()
    every = [
        *registry._changing.get_all_handlers(),
        *registry._spawning.get_all_handlers(),
    ]
    assert every, "the reconcile handlers are registered"
    assert not [h.id for h in every if h.requires_finalizer]
    assert not list(registry._spawning.get_all_handlers()), "no timer or daemon"


def test_a_burst_of_deployment_events_becomes_one_status_refresh(
    cluster: FakeCluster, context: OperatorContext
) -> None:
    reconcile(context, cluster.create_imd(_manifest("efficient", "flagship")))
    for name in ("sd-efficient", "sd-flagship", "sd-router"):
        cluster.set_deployment_status(NS, name, replicas=1, readyReplicas=1, updatedReplicas=1)
        asyncio.run(
            handlers.deployment_changed(
                body=cluster.get("Deployment", NS, name),
                type="MODIFIED",
                namespace=NS,
                memo={"context": context},
            )
        )
    assert context.stale_status == {(NS, "sd")}
    before = cluster.calls.count("patch_imd_status")

    async def one_round() -> None:
        task = asyncio.create_task(handlers.refresh_forever(context, interval_seconds=0.01))
        for _ in range(500):
            if cluster.calls.count("patch_imd_status") > before:
                break
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(one_round())
    assert cluster.calls.count("patch_imd_status") == before + 1
    assert cluster.imd(NS, "sd")["status"]["tiers"]["flagship"]["readiness"] == "1/1"
