"""The in-memory index of children: what the watches and the operator's own writes tell it, and
plans made from its slim copies equal plans made from whole listed objects."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from duotone_contracts.api import parse_imd
from duotone_operator.adapters.child_index import ChildIndex, slim
from duotone_operator.plan import (
    HandOverReplicas,
    desired_children,
    key,
    plan_reconcile,
    plan_repair,
)
from duotone_operator.render import names
from duotone_operator.render.objects import RenderSettings
from tests.support.builders import imd

pytestmark = pytest.mark.unit

SETTINGS = RenderSettings()
NS = "images"


def _owner(*tiers: str, uid: str = "uid-sd") -> Any:
    builder = imd("sd")
    for tier in tiers:
        builder = builder.tier(tier, gpus=0)
    manifest = builder.build()
    manifest["metadata"] |= {"namespace": NS, "uid": uid, "generation": 2}
    return parse_imd(manifest)


def _listed(
    owner: Any,
    *,
    version: int = 10,
    replicas_managers: tuple[str, ...] = (names.SCALE_FIELD_MANAGER,),
) -> dict[tuple[str, str], dict[str, Any]]:
    """The owner's children as the API server lists them: uids, versions, owner references,
    managedFields (the autoscaler owns the tiers' replicas) and fields a plan never reads."""
    found = {}
    for number, child in enumerate(desired_children(owner, SETTINGS, {})):
        listed = copy.deepcopy(child)
        metadata = listed["metadata"]
        metadata |= {
            "uid": f"child-{number}",
            "resourceVersion": str(version + number),
            "creationTimestamp": "2026-12-03T00:00:00Z",
            "ownerReferences": [{"uid": owner.metadata.uid, "kind": "ImageModelDeployment"}],
            "managedFields": [
                {"manager": names.FIELD_MANAGER, "fieldsV1": {"f:metadata": {"f:labels": {}}}}
            ],
        }
        if listed["kind"] == "Deployment":
            listed["spec"]["replicas"] = 3
            metadata["managedFields"] += [
                {"manager": manager, "fieldsV1": {"f:spec": {"f:replicas": {}}}}
                for manager in replicas_managers
            ]
            listed["status"] = {"readyReplicas": 3}
        found[(listed["kind"], metadata["name"])] = listed
    return found


def _index(children: dict[tuple[str, str], dict[str, Any]]) -> ChildIndex:
    index = ChildIndex()
    for child in children.values():
        index.seen(child)
    return index


def _summary(plan: Any) -> list[tuple[str, str, str, int | None]]:
    """Each step as (type, kind, name, replicas handed over)."""
    out = []
    for step in plan.steps:
        if isinstance(step, HandOverReplicas):
            out.append(("HandOverReplicas", "Deployment", step.name, step.replicas))
        else:
            out.append((type(step).__name__, *key(step.manifest), None))
    return out


@pytest.mark.parametrize(
    ("tiers", "replicas_managers"),
    [
        pytest.param(("efficient", "flagship"), (names.SCALE_FIELD_MANAGER,), id="in sync"),
        pytest.param(("efficient",), (names.SCALE_FIELD_MANAGER,), id="a tier removed"),
        pytest.param(
            ("efficient", "flagship"), (names.FIELD_MANAGER,), id="replicas not handed over"
        ),
    ],
)
def test_plans_from_the_index_equal_plans_from_a_listing(
    tiers: tuple[str, ...], replicas_managers: tuple[str, ...]
) -> None:
    listed = _listed(_owner("efficient", "flagship"), replicas_managers=replicas_managers)
    from_index = _index(listed).children(NS, "sd")
    assert set(from_index) == set(listed)
    assert all(len(str(from_index[k])) < len(str(listed[k])) for k in listed), "slim copies"

    owner = _owner(*tiers)
    drifted = frozenset({("Deployment", names.tier_name("sd", "efficient"))})
    plans = [
        (
            plan_reconcile(
                owner,
                desired_children(owner, SETTINGS, observed),
                observed,
                handled_generation=1,
            ),
            plan_repair(owner, desired_children(owner, SETTINGS, observed), observed, drifted),
        )
        for observed in (listed, from_index)
    ]
    (full, full_repair), (indexed, indexed_repair) = plans
    assert _summary(indexed) == _summary(full)
    assert indexed.events == full.events
    assert _summary(indexed_repair) == _summary(full_repair)
    deletes = [s for s in _summary(indexed) if s[0] == "Delete"]
    assert bool(deletes) == (len(tiers) == 1), "a removed tier's owned children are deleted"
    hand_overs = [s for s in _summary(indexed) if s[0] == "HandOverReplicas"]
    assert hand_overs == (
        []
        if replicas_managers == (names.SCALE_FIELD_MANAGER,)
        else [("HandOverReplicas", "Deployment", names.tier_name("sd", t), 3) for t in tiers]
    ), "replicas handed over at their listed value"


def test_a_slim_child_keeps_what_plans_read_and_drops_the_rest() -> None:
    listed = _listed(_owner("efficient"))
    deployment = listed[("Deployment", names.tier_name("sd", "efficient"))]
    kept = slim(deployment)
    assert kept["spec"] == {"replicas": 3}
    assert [e["manager"] for e in kept["metadata"]["managedFields"]] == [
        names.SCALE_FIELD_MANAGER
    ], "only the managers of spec.replicas"
    assert kept["metadata"]["ownerReferences"] == [{"uid": "uid-sd"}]
    assert "status" not in kept
    assert "template" not in kept.get("spec", {})


def test_an_imds_children_are_its_own() -> None:
    index = _index(_listed(_owner("efficient")))
    assert index.children(NS, "sd")
    assert index.children(NS, "other") == {}
    assert index.children("elsewhere", "sd") == {}


def test_a_trailing_watch_event_does_not_undo_a_newer_write() -> None:
    listed = _listed(_owner("efficient"), version=100)
    index = _index(listed)
    child_key = ("Deployment", names.tier_name("sd", "efficient"))
    older = copy.deepcopy(listed[child_key])
    older["metadata"]["resourceVersion"] = "50"
    older["spec"]["replicas"] = 1
    index.seen(older)
    assert index.children(NS, "sd")[child_key]["spec"] == {"replicas": 3}

    newer = copy.deepcopy(listed[child_key])
    newer["metadata"]["resourceVersion"] = "500"
    newer["spec"]["replicas"] = 7
    index.seen(newer)
    assert index.children(NS, "sd")[child_key]["spec"] == {"replicas": 7}


def test_a_deletion_removes_the_child_but_not_its_successor() -> None:
    listed = _listed(_owner("efficient"))
    index = _index(listed)
    child_key = ("Service", names.tier_name("sd", "efficient"))
    gone = listed[child_key]
    index.gone(gone)
    assert child_key not in index.children(NS, "sd")

    successor = copy.deepcopy(gone)
    successor["metadata"] |= {"uid": "recreated", "resourceVersion": "999"}
    index.seen(successor)
    index.gone(gone)  # the old object's deletion, delivered late
    assert index.children(NS, "sd")[child_key]["metadata"]["uid"] == "recreated"

    index.gone(successor)
    assert child_key not in index.children(NS, "sd")


def test_objects_without_an_imd_label_are_ignored() -> None:
    index = ChildIndex()
    index.seen({"kind": "Service", "metadata": {"name": "x", "namespace": NS}})
    index.gone({"kind": "Service", "metadata": {"name": "x", "namespace": NS}})
    assert len(index) == 0
