"""Status and conditions from observations (pure, scripted time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from duotone_contracts.api import parse_imd
from duotone_operator.render.references import carried_problems
from duotone_operator.render.status import (
    DeploymentObservation,
    Problem,
    compute_status,
    refreshed_status,
)
from tests.support.builders import imd

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _imd(generation: int = 2) -> Any:
    manifest = imd("sd").tier("efficient", min=2).tier("flagship", min=0).build()
    manifest["metadata"].update(namespace="images", uid="u", generation=generation)
    return parse_imd(manifest)


def obs(
    desired: int,
    ready: int,
    *,
    updated: int | None = None,
    replicas: int | None = None,
    lag: bool = False,
    stuck: bool = False,
) -> DeploymentObservation:
    return DeploymentObservation(
        desired=desired,
        replicas=desired if replicas is None else replicas,
        ready=ready,
        updated=desired if updated is None else updated,
        generation=3,
        observed_generation=2 if lag else 3,
        stuck=stuck,
    )


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


@pytest.mark.parametrize(
    ("tiers", "router", "problems", "expected"),
    [
        pytest.param(
            {"efficient": obs(2, 2), "flagship": obs(0, 0)},
            obs(2, 2),
            [],
            {
                "Ready": ("True", "AllTiersReady"),
                "Progressing": ("False", "Stable"),
                "Degraded": ("False", "AsExpected"),
            },
            id="all ready, flagship scaled to zero counts as ready",
        ),
        pytest.param(
            {"efficient": None, "flagship": None},
            None,
            [],
            {"Ready": ("False", "Creating"), "Progressing": ("True", "RollingOut")},
            id="nothing created yet",
        ),
        pytest.param(
            {"efficient": obs(2, 1), "flagship": obs(0, 0)},
            obs(2, 2),
            [],
            {"Ready": ("False", "TiersNotReady"), "Progressing": ("True", "RollingOut")},
            id="a tier short of ready pods",
        ),
        pytest.param(
            {"efficient": obs(2, 2, updated=1, replicas=3), "flagship": obs(0, 0)},
            obs(2, 2),
            [],
            {"Ready": ("True", "AllTiersReady"), "Progressing": ("True", "RollingOut")},
            id="rolling out while old pods still serve: ready and progressing",
        ),
        pytest.param(
            {"efficient": obs(2, 2, lag=True), "flagship": obs(0, 0)},
            obs(2, 2),
            [],
            {"Progressing": ("True", "RollingOut")},
            id="deployment controller has not seen the new spec yet",
        ),
        pytest.param(
            {"efficient": obs(2, 0, stuck=True), "flagship": obs(0, 0)},
            obs(2, 2),
            [],
            {"Ready": ("False", "TiersNotReady"), "Degraded": ("True", "RolloutStuck")},
            id="rollout past its progress deadline is degraded",
        ),
        pytest.param(
            {"efficient": None, "flagship": None},
            None,
            [Problem("PersistentVolumeClaimNotFound", "PVC model-store not found")],
            {
                "Ready": ("False", "PersistentVolumeClaimNotFound"),
                "Progressing": ("False", "PersistentVolumeClaimNotFound"),
                "Degraded": ("True", "PersistentVolumeClaimNotFound"),
            },
            id="impossible spec: not ready, degraded, with the reason",
        ),
    ],
)
def test_conditions(
    tiers: dict[str, Any],
    router: Any,
    problems: list[Problem],
    expected: dict[str, tuple[str, str]],
) -> None:
    status = compute_status(
        _imd(), tiers=tiers, router=router, problems=problems, previous=None, now=NOW
    )
    got = _conditions(status)
    assert {k: got[k] for k in expected} == expected
    assert {c["observedGeneration"] for c in status["conditions"]} == {2}


def _status(
    tiers: dict[str, Any], previous: Any = None, now: datetime = NOW, imd_: Any = None
) -> Any:
    return compute_status(
        imd_ or _imd(), tiers=tiers, router=obs(2, 2), problems=[], previous=previous, now=now
    )


def test_status_fields_and_tier_summary() -> None:
    status = _status({"efficient": obs(2, 1), "flagship": obs(0, 0)})
    assert status["observedGeneration"] == 2
    assert status["endpoint"] == "http://sd-router.images.svc:8080"
    assert status["tiers"]["efficient"] == {"replicas": 2, "readyReplicas": 1, "readiness": "1/2"}
    assert status["tiers"]["flagship"]["readiness"] == "0/0"


def test_removed_tier_is_deleted_from_status_and_autoscaler_fields_are_kept() -> None:
    manifest = imd("sd").tier("efficient").build()
    manifest["metadata"].update(namespace="images", uid="u", generation=1)
    previous = {
        "tiers": {
            "efficient": {"p50LatencyMs": 312.0, "queueDepth": 3.0},
            "flagship": {"p50LatencyMs": 5200.0},
        }
    }
    status = _status({"efficient": obs(1, 1)}, previous=previous, imd_=parse_imd(manifest))
    assert status["tiers"]["flagship"] is None  # merge patch deletes it
    assert "p50LatencyMs" not in status["tiers"]["efficient"]  # the autoscaler's to write
    assert status["p50"] == "eff 312ms, flag 5.2s"


def test_transition_time_changes_only_when_the_status_does() -> None:
    first = _status({"efficient": obs(2, 1), "flagship": obs(0, 0)})
    later = NOW + timedelta(minutes=5)
    same = _status({"efficient": obs(2, 1), "flagship": obs(0, 0)}, previous=first, now=later)
    flipped = _status({"efficient": obs(2, 2), "flagship": obs(0, 0)}, previous=first, now=later)

    def ready_since(status: Any) -> str:
        return str(
            next(c for c in status["conditions"] if c["type"] == "Ready")["lastTransitionTime"]
        )

    assert ready_since(first) == ready_since(same) == "2026-11-22T12:00:00Z"
    assert ready_since(flipped) == "2026-11-22T12:05:00Z"


def _by_type(status: Any) -> dict[str, Any]:
    return {c["type"]: c for c in status["conditions"]}


@pytest.mark.parametrize(
    ("observation", "expected"),
    [
        pytest.param(None, ("False", "NotCreated"), id="no Deployment yet"),
        pytest.param(obs(2, 0, replicas=0), ("False", "PodsPending"), id="no pod yet"),
        pytest.param(obs(2, 1), ("False", "LoadingModel"), id="pods loading the model"),
        pytest.param(obs(2, 0, stuck=True), ("False", "RolloutStuck"), id="past the deadline"),
        pytest.param(obs(0, 0), ("True", "ScaledToZero"), id="at zero: a request wakes it"),
        pytest.param(obs(2, 2), ("True", "Ready"), id="all ready"),
    ],
)
def test_each_tier_and_the_router_have_their_own_condition(
    observation: DeploymentObservation | None, expected: tuple[str, str]
) -> None:
    status = compute_status(
        _imd(),
        tiers={"efficient": observation, "flagship": obs(0, 0)},
        router=observation,
        problems=[],
        previous=None,
        now=NOW,
    )
    conditions = _by_type(status)
    for kind in ("EfficientReady", "RouterReady"):
        assert (conditions[kind]["status"], conditions[kind]["reason"]) == expected
        assert conditions[kind]["message"]
    assert conditions["FlagshipReady"]["reason"] == "ScaledToZero"


def test_only_an_applied_reconcile_moves_observed_generation() -> None:
    previous = {"observedGeneration": 1}
    kept = compute_status(
        _imd(),
        tiers={},
        router=None,
        problems=[Problem("PersistentVolumeClaimNotFound", "PVC x not found")],
        previous=previous,
        now=NOW,
        applied=False,
    )
    assert kept["observedGeneration"] == 1
    assert {c["observedGeneration"] for c in kept["conditions"]} == {2}, "the verdict is on 2"
    moved = compute_status(_imd(), tiers={}, router=None, problems=[], previous=previous, now=NOW)
    assert moved["observedGeneration"] == 2


def test_a_refresh_keeps_the_reconciles_problem_and_generation() -> None:
    problem = Problem("PersistentVolumeClaimNotFound", "PersistentVolumeClaim 'x' not found")
    reported = compute_status(
        _imd(),
        tiers={"efficient": obs(2, 2), "flagship": obs(0, 0)},
        router=obs(1, 1),
        problems=[problem],
        previous={"observedGeneration": 1},
        now=NOW,
        applied=False,
    )
    carried = carried_problems(reported)
    assert carried == (problem,)
    refreshed = refreshed_status(
        _imd(generation=2),
        tiers={"efficient": obs(3, 3), "flagship": obs(0, 0)},
        router=obs(1, 1),
        carried=carried,
        previous=reported,
        now=NOW + timedelta(seconds=5),
    )
    assert refreshed["observedGeneration"] == 1
    ready = _by_type(refreshed)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "PersistentVolumeClaimNotFound")
    assert ready["lastTransitionTime"] == _by_type(reported)["Ready"]["lastTransitionTime"]
    assert refreshed["tiers"]["efficient"]["readiness"] == "3/3", "the counts do move"


def test_a_refresh_without_problems_reports_readiness_for_the_reconciled_generation() -> None:
    previous = compute_status(
        _imd(generation=1),
        tiers={"efficient": obs(2, 1), "flagship": obs(0, 0)},
        router=obs(1, 1),
        problems=[],
        previous=None,
        now=NOW,
    )
    refreshed = refreshed_status(
        _imd(generation=2),  # a new spec the reconcile has not applied yet
        tiers={"efficient": obs(2, 2), "flagship": obs(0, 0)},
        router=obs(1, 1),
        carried=carried_problems(previous),
        previous=previous,
        now=NOW,
    )
    assert carried_problems(previous) == ()
    assert refreshed["observedGeneration"] == 1
    assert {c["observedGeneration"] for c in refreshed["conditions"]} == {1}
    assert _by_type(refreshed)["Ready"]["status"] == "True"
