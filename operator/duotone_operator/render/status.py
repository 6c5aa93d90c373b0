"""The status an IMD should show, from what was observed (pure; time is an argument).

Conditions follow the Kubernetes API conventions: Ready, Progressing and Degraded are always
present, plus one `<Tier>Ready` per tier and `RouterReady`, each with a reason, a message, the
generation it describes, and a transition time that changes only when the status does.

`observedGeneration` is the last generation a reconcile applied, and only a reconcile moves it
(`compute_status(applied=True)`). Refreshes on Deployment events (`refreshed_status`) update
counts and readiness but keep observedGeneration and any problem a reconcile reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from duotone_contracts.api.v1alpha1 import TIER_NAMES, ImageModelDeployment, TierName
from duotone_operator.policy.autoscaling import ScaleDecision
from duotone_operator.render import names


@dataclass(frozen=True)
class DeploymentObservation:
    """The parts of a Deployment's spec and status that decide readiness."""

    desired: int
    replicas: int
    ready: int
    updated: int
    generation: int
    observed_generation: int
    stuck: bool = False
    """Its Progressing condition says ProgressDeadlineExceeded."""

    @property
    def ready_enough(self) -> bool:
        return self.ready >= self.desired

    @property
    def settled(self) -> bool:
        """The rollout of the current spec is complete and no old pods remain."""
        return (
            self.observed_generation >= self.generation
            and self.updated >= self.desired
            and self.replicas == self.desired
            and self.ready_enough
        )


def observe_deployment(deployment: Mapping[str, Any]) -> DeploymentObservation:
    """What a Deployment manifest (as listed or watched) says about readiness."""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    conditions = status.get("conditions") or []
    stuck = any(
        c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
        for c in conditions
    )
    return DeploymentObservation(
        desired=int(spec.get("replicas", 1)),
        replicas=int(status.get("replicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        generation=int(deployment["metadata"].get("generation") or 0),
        observed_generation=int(status.get("observedGeneration") or 0),
        stuck=stuck,
    )


def tier_observations(
    children: Mapping[tuple[str, str], Mapping[str, Any]],
) -> dict[TierName, DeploymentObservation]:
    """Observations of the tier Deployments among an IMD's children ((kind, name) -> manifest),
    by tier."""
    found: dict[TierName, DeploymentObservation] = {}
    for (kind, _), child in children.items():
        tier = child["metadata"].get("labels", {}).get(names.TIER_LABEL)
        if kind != "Deployment":
            continue
        for name in TIER_NAMES:
            if tier == name:
                found[name] = observe_deployment(child)
    return found


Verdict = tuple[bool, str, str]
"""A condition's status, reason and message."""


@dataclass(frozen=True)
class Problem:
    """Why a schema-valid spec cannot work in this cluster (e.g. a missing PVC)."""

    reason: str
    message: str


def condition(
    kind: str,
    *,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    previous: Mapping[str, Mapping[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    """One condition; its transition time moves only when its status changes."""
    value = "True" if status else "False"
    before = previous.get(kind, {})
    changed = before.get("status") != value
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": (
            now.strftime("%Y-%m-%dT%H:%M:%SZ")
            if changed or "lastTransitionTime" not in before
            else before["lastTransitionTime"]
        ),
    }


def _describe(label: str, obs: DeploymentObservation | None) -> str:
    if obs is None:
        return f"{label} not created yet"
    return f"{label} {obs.ready}/{obs.desired} ready"


def _format_ms(ms: float) -> str:
    return f"{ms / 1000:.1f}s" if ms >= 1000 else f"{ms:.0f}ms"


def p50_summary(previous_tiers: Mapping[str, Any]) -> str | None:
    """`eff 310ms, flag 5.2s` from the autoscaler's latest observations, if any."""
    parts = []
    for tier, short in (("efficient", "eff"), ("flagship", "flag")):
        p50 = (previous_tiers.get(tier) or {}).get("p50LatencyMs")
        if p50 is not None:
            parts.append(f"{short} {_format_ms(float(p50))}")
    return ", ".join(parts) or None


TIER_CONDITIONS: Mapping[str, str] = {
    "efficient": "EfficientReady",
    "flagship": "FlagshipReady",
    "router": "RouterReady",
}
"""The per-component condition types, by tier (and the router)."""


def _component_verdict(label: str, obs: DeploymentObservation | None) -> Verdict:
    """One tier's (or the router's) readiness with a reason a user can act on."""
    if obs is None:
        return (False, "NotCreated", f"{label} Deployment not created yet")
    if obs.stuck:
        return (False, "RolloutStuck", f"{label}: progress deadline exceeded")
    if obs.desired == 0:
        return (True, "ScaledToZero", f"{label} at zero replicas; a request wakes it")
    if obs.ready_enough:
        return (True, "Ready", _describe(label, obs))
    if obs.replicas == 0:
        return (False, "PodsPending", f"{_describe(label, obs)}; no pod created yet")
    return (False, "LoadingModel", f"{_describe(label, obs)}; pods starting or loading the model")


def compute_status(
    imd: ImageModelDeployment,
    *,
    tiers: Mapping[TierName, DeploymentObservation | None],
    router: DeploymentObservation | None,
    problems: Sequence[Problem],
    previous: Mapping[str, Any] | None,
    now: datetime,
    applied: bool = True,
    described_generation: int | None = None,
) -> dict[str, Any]:
    """The status fields the reconciler owns, as a JSON merge patch body.

    `applied`: the reconcile applied this generation, so observedGeneration becomes it;
    otherwise the previous observedGeneration is kept. `described_generation` is the
    generation the conditions describe (default: the IMD's). Tiers removed from the spec are
    set to None (deleted by the merge patch); autoscaler-owned fields of the remaining tiers
    (queueDepth, p50LatencyMs, ...) are left out, so the patch keeps them.
    """
    previous = previous or {}
    previous_conditions = {c["type"]: c for c in previous.get("conditions", []) if "type" in c}
    generation = imd.metadata.generation if described_generation is None else described_generation
    present = imd.spec.tiers.present()

    tier_status: dict[str, Any] = {}
    for tier in TIER_NAMES:
        if tier not in present:
            tier_status[tier] = None
            continue
        obs = tiers.get(tier)
        replicas, ready_pods, desired = (
            (obs.replicas, obs.ready, obs.desired)
            if obs
            else (0, 0, present[tier].replicas.minimum)
        )
        tier_status[tier] = {
            "replicas": replicas,
            "readyReplicas": ready_pods,
            "readiness": f"{ready_pods}/{desired}",
        }

    observed: dict[str, DeploymentObservation | None] = {
        **{t: tiers.get(t) for t in present},
        "router": router,
    }
    summary = "; ".join(_describe(label, obs) for label, obs in observed.items())
    missing = [label for label, obs in observed.items() if obs is None]
    not_ready = [label for label, obs in observed.items() if obs and not obs.ready_enough]
    rolling = [label for label, obs in observed.items() if obs and not obs.settled]
    stuck = [label for label, obs in observed.items() if obs and obs.stuck]

    ready: Verdict
    progressing: Verdict
    degraded: Verdict
    if problems:
        reason = problems[0].reason
        message = "; ".join(p.message for p in problems)
        ready = (False, reason, message)
        progressing = (False, reason, "waiting for the problem to be fixed")
        degraded = (True, reason, message)
    else:
        if missing:
            ready = (False, "Creating", summary)
        elif not_ready:
            ready = (False, "TiersNotReady", summary)
        else:
            ready = (True, "AllTiersReady", summary)
        if missing or rolling:
            progressing = (True, "RollingOut", summary)
        else:
            progressing = (False, "Stable", summary)
        if stuck:
            degraded = (True, "RolloutStuck", f"progress deadline exceeded: {', '.join(stuck)}")
        else:
            degraded = (False, "AsExpected", "no known problem")

    verdicts: list[tuple[str, Verdict]] = [
        ("Ready", ready),
        ("Progressing", progressing),
        ("Degraded", degraded),
    ]
    verdicts += [
        (TIER_CONDITIONS[label], _component_verdict(label, obs)) for label, obs in observed.items()
    ]
    conditions = [
        condition(
            kind,
            status=values[0],
            reason=values[1],
            message=values[2],
            generation=generation,
            previous=previous_conditions,
            now=now,
        )
        for kind, values in verdicts
    ]
    status: dict[str, Any] = {
        "observedGeneration": (
            imd.metadata.generation if applied else previous.get("observedGeneration")
        ),
        "endpoint": names.endpoint(imd.metadata.name, imd.metadata.namespace or "default"),
        "tiers": tier_status,
        "conditions": conditions,
    }
    status["p50"] = p50_summary(previous.get("tiers") or {})
    return status


def refreshed_status(
    imd: ImageModelDeployment,
    *,
    tiers: Mapping[TierName, DeploymentObservation | None],
    router: DeploymentObservation | None,
    carried: Sequence[Problem],
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The status after a child Deployment moved, outside a reconcile.

    Counts and readiness follow the observation; observedGeneration stays where the last
    reconcile put it, and so does the generation the conditions describe; `carried` are the
    problems that reconcile reported (`references.carried_problems`), still in force until a
    reconcile finds them fixed.
    """
    previous = previous or {}
    ready: Mapping[str, Any] = next(
        (c for c in previous.get("conditions") or [] if c.get("type") == "Ready"), {}
    )
    described = ready.get("observedGeneration") if carried else previous.get("observedGeneration")
    return compute_status(
        imd,
        tiers=tiers,
        router=router,
        problems=carried,
        previous=previous,
        now=now,
        applied=False,
        described_generation=described if isinstance(described, int) else 0,
    )


def scale_status(
    decisions: Mapping[TierName, ScaleDecision],
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    """The status fields the autoscaler owns, as a JSON merge patch body.

    Held decisions (metrics missing) leave queueDepth and p50LatencyMs as they were; otherwise
    a tier with no recent requests has its p50 removed rather than frozen at an old value.
    """
    previous_tiers: Mapping[str, Any] = (previous or {}).get("tiers") or {}
    tiers: dict[str, Any] = {}
    for tier, decision in decisions.items():
        fields: dict[str, Any] = {
            "desiredReplicas": decision.replicas,
            "gpuBudgetLimited": decision.budget_limited,
        }
        if not decision.held:
            fields["queueDepth"] = (
                round(decision.queue_depth, 1) if decision.queue_depth is not None else None
            )
            fields["p50LatencyMs"] = (
                round(decision.p50_latency_ms, 1) if decision.p50_latency_ms is not None else None
            )
        if decision.direction != "none":
            fields["lastScaleTime"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
            fields["lastScaleReason"] = decision.reason[:1024]
        tiers[tier] = fields
    merged = {
        tier: {**(previous_tiers.get(tier) or {}), **tiers.get(tier, {})}
        for tier in {*previous_tiers, *tiers}
    }
    return {"tiers": tiers, "p50": p50_summary(merged)}
