"""Drift: which child events call for a repair, what a repair does (pure), and the repair
through the handlers against the in-memory FakeCluster."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import kopf
import pytest

from duotone_contracts.api import ImageModelDeployment, parse_imd
from duotone_operator import handlers
from duotone_operator.handlers import OperatorContext
from duotone_operator.plan import (
    UNSEEN,
    Apply,
    Delete,
    HandOverReplicas,
    desired_children,
    drift_verdict,
    foreign_write,
    key,
    plan_repair,
)
from duotone_operator.render import names
from duotone_operator.render.objects import RenderSettings
from tests.fakes.cluster import FakeCluster
from tests.support.builders import imd

pytestmark = pytest.mark.unit

NS = "images"


def _child(*writes: tuple[str, str, str | None], generation: int = 4) -> dict[str, Any]:
    """A child whose managedFields list (manager, time, subresource) writes."""
    return {
        "kind": "Deployment",
        "metadata": {
            "name": "sd-efficient",
            "generation": generation,
            "resourceVersion": "99",
            "managedFields": [
                {"manager": m, "time": t, **({"subresource": sub} if sub else {})}
                for m, t, sub in writes
            ],
        },
    }


OWN = (names.FIELD_MANAGER, "2026-12-01T10:00:00Z", None)


@pytest.mark.parametrize(
    ("writes", "foreign"),
    [
        pytest.param([OWN], None, id="only the operator wrote it"),
        pytest.param(
            [OWN, ("kube-controller-manager", "2026-12-01T10:00:05Z", "status")],
            None,
            id="status written by a controller is not drift",
        ),
        pytest.param(
            [OWN, ("kubectl", "2026-12-01T10:00:09Z", "scale")],
            None,
            id="kubectl scale (the scale subresource) is not drift",
        ),
        pytest.param(
            [OWN, ("kubectl-edit", "2026-12-01T10:01:00Z", None)],
            "kubectl-edit",
            id="a hand edit after the operator's apply is",
        ),
        pytest.param(
            [("kubectl-edit", "2026-12-01T09:00:00Z", None), OWN],
            None,
            id="an edit the operator has since re-applied over is not",
        ),
        pytest.param(
            [OWN, ("kubectl-edit", "2026-12-01T10:00:00Z", None)],
            "kubectl-edit",
            id="same second: counted as foreign (a repair of a synced child is a no-op)",
        ),
    ],
)
def test_foreign_write(writes: list[tuple[str, str, str | None]], foreign: str | None) -> None:
    found = foreign_write(_child(*writes))
    assert (found.manager if found else None) == foreign


def test_a_deletion_always_repairs_and_a_foreign_write_repairs_once() -> None:
    edited = _child(OWN, ("kubectl-edit", "2026-12-01T10:01:00Z", None))
    assert drift_verdict("DELETED", edited, None) == (True, None)

    first_sight, seen = drift_verdict(None, edited, UNSEEN)
    assert not first_sight, "the initial listing only records: resume re-applies every child"
    again, seen_again = drift_verdict("MODIFIED", edited, seen)
    assert not again, "a status event does not repeat the repair"
    assert seen_again == seen

    edited_again = _child(OWN, ("kubectl-edit", "2026-12-01T10:02:00Z", None), generation=5)
    repair, _ = drift_verdict("MODIFIED", edited_again, seen)
    assert repair
    synced = drift_verdict("MODIFIED", _child(OWN), None)
    assert synced == (False, None)


def _imd(*tiers: str) -> ImageModelDeployment:
    builder = imd("sd")
    for tier in tiers:
        builder = builder.tier(tier, gpus=0)
    manifest = builder.build()
    manifest["metadata"] |= {"namespace": NS, "uid": "uid-sd", "generation": 3}
    return parse_imd(manifest)


def test_a_repair_applies_only_the_missing_and_the_drifted_children() -> None:
    owner = _imd("efficient")
    desired = desired_children(owner, RenderSettings(), {})
    observed = {key(c): copy.deepcopy(c) for c in desired}
    for listed in observed.values():
        if listed["kind"] == "Deployment":
            listed["metadata"]["managedFields"] = [
                {"manager": names.SCALE_FIELD_MANAGER, "fieldsV1": {"f:spec": {"f:replicas": {}}}}
            ]
    del observed[("Service", "sd-router")]
    drifted = frozenset({("ConfigMap", "sd-efficient-config")})
    plan = plan_repair(
        owner, desired_children(owner, RenderSettings(), observed), observed, drifted
    )
    applied = {key(s.manifest) for s in plan.steps if isinstance(s, Apply)}
    assert applied == {("Service", "sd-router"), ("ConfigMap", "sd-efficient-config")}
    assert not [s for s in plan.steps if isinstance(s, (Delete, HandOverReplicas))]
    assert [e.reason for e in plan.events] == ["Repaired"]
    assert "Service/sd-router" in plan.events[0].message
    nothing = plan_repair(owner, desired, {key(c): c for c in desired}, frozenset())
    assert not nothing.steps
    assert not nothing.events


# ---------------------------------------------------------------- through the handlers


def _reconciled(cluster: FakeCluster, context: OperatorContext) -> dict[str, Any]:
    manifest = imd("sd").tier("efficient", gpus=0).build()
    manifest["metadata"]["namespace"] = NS
    body = cluster.create_imd(manifest)
    patch = kopf.Patch()
    handlers.reconcile(body=body, patch=patch, retry=0, memo={"context": context})
    cluster.patch_imd_status(NS, "sd", dict(patch["status"]))
    asyncio.run(
        handlers.watch_delivered(
            body=cluster.imd(NS, "sd"), type="ADDED", memo={"context": context}
        )
    )
    return cluster.imd(NS, "sd")


def _event(
    context: OperatorContext, body: dict[str, Any] | None, kind: str, name: str, type_: str | None
) -> None:
    labels = {"app.kubernetes.io/instance": "sd"}
    asyncio.run(
        handlers.child_changed(
            body=body or {"kind": kind, "metadata": {"name": name, "labels": labels}},
            type=type_,
            namespace=NS,
            memo={"context": context},
        )
    )


def test_a_deleted_child_and_a_hand_edit_are_restored_and_other_fields_survive() -> None:
    cluster = FakeCluster()
    context = OperatorContext(cluster=cluster)
    _reconciled(cluster, context)
    deleted = cluster.get("ConfigMap", NS, "sd-router-config")
    assert deleted is not None
    cluster.remove("ConfigMap", NS, "sd-router-config")
    _event(context, deleted, "ConfigMap", "sd-router-config", "DELETED")

    service = cluster.get("Service", NS, "sd-efficient")
    assert service is not None
    edit = copy.deepcopy(service)
    edit["spec"]["ports"][0]["port"] = 1234
    edit["metadata"]["annotations"] = {"team.example.com/owner": "images"}
    cluster.apply(edit, manager="kubectl-edit")
    # The FakeCluster keeps no write times: the watch event carries them as the API would.
    watched = cluster.get("Service", NS, "sd-efficient")
    assert watched is not None
    watched["kind"] = "Service"
    _event(context, watched, "Service", "sd-efficient", None)  # first sight: recorded only
    watched["metadata"]["managedFields"] = [
        {"manager": names.FIELD_MANAGER, "operation": "Apply", "time": "2026-12-01T10:00:00Z"},
        {"manager": "kubectl-edit", "operation": "Update", "time": "2026-12-01T10:05:00Z"},
    ]
    _event(context, watched, "Service", "sd-efficient", "MODIFIED")

    pending = context.drifted.pop((NS, "sd"))
    assert ("ConfigMap", "sd-router-config") in pending
    assert ("Service", "sd-efficient") in pending
    handlers.repair(context, NS, "sd", pending)

    assert cluster.get("ConfigMap", NS, "sd-router-config") is not None
    restored = cluster.get("Service", NS, "sd-efficient")
    assert restored is not None
    assert restored["spec"]["ports"][0]["port"] == service["spec"]["ports"][0]["port"]
    assert restored["metadata"]["annotations"] == {"team.example.com/owner": "images"}
    assert cluster.events[-1].reason == "Repaired"


def test_a_repair_leaves_an_unreconciled_generation_to_the_reconcile() -> None:
    cluster = FakeCluster()
    context = OperatorContext(cluster=cluster)
    body = _reconciled(cluster, context)
    cluster.remove("ConfigMap", NS, "sd-router-config")
    cluster.update_imd_spec(NS, "sd", body["spec"])  # generation 2, not reconciled yet
    handlers.repair(context, NS, "sd", {("ConfigMap", "sd-router-config")})
    assert cluster.get("ConfigMap", NS, "sd-router-config") is None


def test_events_of_children_of_unknown_imds_queue_nothing() -> None:
    context = OperatorContext(cluster=FakeCluster())
    _event(context, None, "ConfigMap", "sd-router-config", "DELETED")
    assert not context.drifted


def test_the_child_index_follows_the_watches() -> None:
    cluster = FakeCluster()
    context = OperatorContext(cluster=cluster)
    _reconciled(cluster, context)
    child = cluster.get("ConfigMap", NS, "sd-router-config")
    assert child is not None
    child["kind"] = "ConfigMap"
    asyncio.run(handlers.child_indexed(body=child, memo={"context": context}))
    assert ("ConfigMap", "sd-router-config") in context.children.children(NS, "sd")
    _event(context, child, "ConfigMap", "sd-router-config", "DELETED")
    assert ("ConfigMap", "sd-router-config") not in context.children.children(NS, "sd")
    assert context.children.synced, "a handler ran: Kopf had listed every kind of child"
