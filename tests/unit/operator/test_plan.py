"""The reconcile plan: desired vs observed children -> steps and events (pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from duotone_contracts.api import ImageModelDeployment, parse_imd
from duotone_operator.plan import (
    Apply,
    Delete,
    HandOverReplicas,
    desired_children,
    key,
    plan_api_failure,
    plan_problems,
    plan_reconcile,
)
from duotone_operator.render import names
from duotone_operator.render.objects import Manifest, RenderSettings
from duotone_operator.render.status import Problem
from tests.support.builders import imd

pytestmark = pytest.mark.unit

SETTINGS = RenderSettings()


def _imd(*tiers: str, generation: int = 1) -> ImageModelDeployment:
    builder = imd("sd")
    for tier in tiers:
        builder = builder.tier(tier, gpus=0)
    manifest = builder.build()
    manifest["metadata"] |= {"namespace": "ns", "uid": "uid-sd", "generation": generation}
    return parse_imd(manifest)


def _observed(
    children: list[Manifest], replicas_managers: tuple[str, ...] = (names.SCALE_FIELD_MANAGER,)
) -> dict[tuple[str, str], Manifest]:
    """What the cluster would list after `children` were applied and handed over."""
    found = {}
    for child in children:
        listed = copy.deepcopy(child)
        if child["kind"] == "Deployment" and names.TIER_LABEL in child["metadata"]["labels"]:
            listed["spec"].setdefault("replicas", 1)
            listed["metadata"]["managedFields"] = [
                {"manager": m, "fieldsV1": {"f:spec": {"f:replicas": {}}}}
                for m in replicas_managers
            ]
        found[key(child)] = listed
    return found


def _steps(plan: Any, kind: type) -> list[Any]:
    return [step for step in plan.steps if isinstance(step, kind)]


def test_first_reconcile_creates_everything_and_hands_replicas_over_after_creation() -> None:
    owner = _imd("efficient", "flagship")
    desired = desired_children(owner, SETTINGS, {})
    plan = plan_reconcile(owner, desired, {}, handled_generation=None)
    applied = [key(step.manifest) for step in _steps(plan, Apply)]
    assert applied == [key(child) for child in desired]
    handovers = _steps(plan, HandOverReplicas)
    assert {(h.name, h.replicas) for h in handovers} == {("sd-efficient", 1), ("sd-flagship", 1)}
    for handover in handovers:
        position = plan.steps.index(handover)
        created = plan.steps[position - 1]
        assert isinstance(created, Apply)
        assert key(created.manifest)[1] == handover.name
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "Created")]
    assert "Deployment/sd-flagship" in plan.events[0].message
    assert not _steps(plan, Delete)


def test_existing_tier_deployments_are_rendered_without_replicas() -> None:
    owner = _imd("efficient")
    first = desired_children(owner, SETTINGS, {})
    again = desired_children(owner, SETTINGS, _observed(first))
    deployment = next(c for c in again if key(c) == ("Deployment", "sd-efficient"))
    assert "replicas" not in deployment["spec"]
    router = next(c for c in again if key(c) == ("Deployment", "sd-router"))
    assert router["spec"]["replicas"] == 2, "the router's replicas are the spec's, always"


@pytest.mark.parametrize(
    ("generation", "handled", "events"),
    [
        pytest.param(2, 1, [("Normal", "Applied")], id="new generation, nothing created: Applied"),
        pytest.param(1, 1, [], id="same generation again (resync): no event"),
    ],
)
def test_second_reconcile_applies_without_events_unless_the_generation_is_new(
    generation: int, handled: int, events: list[tuple[str, str]]
) -> None:
    owner = _imd("efficient", generation=generation)
    observed = _observed(desired_children(owner, SETTINGS, {}))
    plan = plan_reconcile(
        owner, desired_children(owner, SETTINGS, observed), observed, handled_generation=handled
    )
    assert [(e.type, e.reason) for e in plan.events] == events
    assert not _steps(plan, HandOverReplicas), "the autoscaler already owns replicas"
    assert not _steps(plan, Delete)


def test_removed_tier_children_are_deleted_and_reported() -> None:
    both = _imd("efficient", "flagship")
    observed = _observed(desired_children(both, SETTINGS, {}))
    efficient_only = _imd("efficient", generation=2)
    plan = plan_reconcile(
        efficient_only,
        desired_children(efficient_only, SETTINGS, observed),
        observed,
        handled_generation=1,
    )
    deleted = sorted(key(step.manifest) for step in _steps(plan, Delete))
    assert deleted == [
        ("ConfigMap", "sd-flagship-config"),
        ("Deployment", "sd-flagship"),
        ("PodDisruptionBudget", "sd-flagship"),
        ("Service", "sd-flagship"),
    ]
    reasons = [e.reason for e in plan.events]
    assert reasons == ["Deleted", "Applied"]


def test_children_owned_by_someone_else_are_never_deleted() -> None:
    both = _imd("efficient", "flagship")
    observed = _observed(desired_children(both, SETTINGS, {}))
    stranger = observed[("Service", "sd-flagship")]
    stranger["metadata"]["ownerReferences"] = [{"uid": "uid-someone-else"}]
    efficient_only = _imd("efficient", generation=2)
    plan = plan_reconcile(
        efficient_only,
        desired_children(efficient_only, SETTINGS, observed),
        observed,
        handled_generation=1,
    )
    assert ("Service", "sd-flagship") not in {key(s.manifest) for s in _steps(plan, Delete)}


def test_child_deleted_out_of_band_is_created_again() -> None:
    owner = _imd("efficient")
    observed = _observed(desired_children(owner, SETTINGS, {}))
    del observed[("Service", "sd-efficient")]
    plan = plan_reconcile(
        owner, desired_children(owner, SETTINGS, observed), observed, handled_generation=1
    )
    assert [(e.reason, e.message) for e in plan.events] == [
        ("Created", "generation 1: created Service/sd-efficient")
    ]


def test_a_tier_deployment_only_the_reconciler_owns_is_handed_over_before_the_apply() -> None:
    """A crash between creating a Deployment and handing its replicas over: the next reconcile
    hands over its current replicas first, so the apply (without replicas) cannot reset them."""
    owner = _imd("efficient")
    observed = _observed(
        desired_children(owner, SETTINGS, {}), replicas_managers=(names.FIELD_MANAGER,)
    )
    observed[("Deployment", "sd-efficient")]["spec"]["replicas"] = 3
    plan = plan_reconcile(
        owner, desired_children(owner, SETTINGS, observed), observed, handled_generation=1
    )
    handover = _steps(plan, HandOverReplicas)
    assert [(h.name, h.replicas) for h in handover] == [("sd-efficient", 3)]
    apply_deployment = next(
        s for s in _steps(plan, Apply) if key(s.manifest) == ("Deployment", "sd-efficient")
    )
    assert plan.steps.index(handover[0]) < plan.steps.index(apply_deployment)
    assert handover[0].manifest() == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sd-efficient", "namespace": "ns"},
        "spec": {"replicas": 3},
    }


@pytest.mark.parametrize(
    ("retry", "delay"),
    [
        pytest.param(0, 5.0, id="first try: the base delay"),
        pytest.param(3, 40.0, id="fourth try: 8x the base"),
        pytest.param(20, 300.0, id="capped"),
    ],
)
def test_problems_touch_no_child_and_retry_with_backoff(retry: int, delay: float) -> None:
    found = [Problem("SecretNotFound", "Secret 'keys' not found in namespace 'ns'")]
    plan = plan_problems(found, retry=retry, base_seconds=5, max_seconds=300)
    assert plan.steps == ()
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "SecretNotFound")]
    assert plan.problems == tuple(found)
    assert plan.retry is not None
    assert plan.retry.delay_seconds == delay
    assert plan.retry.message.startswith("Secret 'keys' not found")


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        pytest.param(409, True, id="conflict: retried"),
        pytest.param(503, True, id="API server unavailable: retried"),
        pytest.param(403, False, id="forbidden: an error, not retried here"),
        pytest.param(422, False, id="invalid object: an error, not retried here"),
    ],
)
def test_api_failures_post_a_warning_and_retry_only_transient_ones(
    status: int, retried: bool
) -> None:
    event, retry = plan_api_failure(status, "boom", retry=2, max_seconds=300)
    assert (event.type, event.reason, event.message) == (
        "Warning",
        "ApplyFailed",
        f"API {status}: boom",
    )
    assert (retry is not None) == retried
    if retry is not None:
        assert retry.delay_seconds == 4.0
