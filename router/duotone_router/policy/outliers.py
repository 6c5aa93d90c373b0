"""Outlier ejection: when a pod gets no new requests, and for how long (pure; time passed in).

A pod is ejected after consecutive failed calls (internal errors, timeouts), a failed connection,
or consecutive missed health probes (a frozen process or a blackholed network answers nothing).
Each ejection lasts longer than the last (5 s, 10 s, 20 s, ... capped at 60 s) until the pod has
stayed in for a healthy period. At most half of a tier's pods are ejected at once (at least one
of two or more), so a fault on the router's side never empties a tier. A pod refusing a request
for a full queue or for invalid inputs is doing its job: those outcomes are neutral.
tests/unit/router/test_outliers.py pins every case.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class Outcome(Enum):
    """What one call or probe said about a pod."""

    SUCCESS = "success"
    NEUTRAL = "neutral"
    """Refused for a full queue or invalid inputs: says nothing about the pod's health."""
    ERROR = "error"
    """An internal error (e.g. the model raised)."""
    TIMEOUT = "timeout"
    """No answer within the deadline."""
    CONNECT = "connect"
    """The pod could not be reached (or refused new work while draining)."""
    PROBE_READY = "probe_ready"
    PROBE_NOT_READY = "probe_not_ready"
    """The pod answered its health probe: not ready (e.g. draining, model unloaded)."""
    PROBE_MISSED = "probe_missed"
    """The health probe got no answer in time: the pod may be frozen."""


class Cause(Enum):
    """Why a pod was ejected (the metric's `cause` label)."""

    ERRORS = "errors"
    CONNECT = "connect"
    NOT_READY = "not_ready"
    UNRESPONSIVE = "unresponsive"


@dataclass(frozen=True)
class OutlierPolicy:
    """Thresholds and durations of ejection (the defaults follow Envoy's outlier detection)."""

    consecutive_failures: int = 5
    """Errors or timeouts in a row that eject a pod (Envoy's consecutive_5xx default)."""
    consecutive_probe_misses: int = 2
    """Health probes in a row without a ready answer that eject a pod."""
    base_ejection_s: float = 5.0
    max_ejection_s: float = 60.0
    healthy_reset_s: float = 60.0
    """In this long after an ejection ends without another, the next one is short again."""
    max_ejected_percent: int = 50
    probe_hold_s: float = 2.0
    """An ejected pod whose probes still miss stays out at least this long past each miss
    (one probe interval plus its timeout), so a frozen pod never gets traffic between probes."""

    def ejection_s(self, ejections: int) -> float:
        """The length of the `ejections`-th ejection in a row (1-based): 5, 10, 20, 40, 60 s."""
        return min(self.max_ejection_s, self.base_ejection_s * 2.0 ** max(0, ejections - 1))


@dataclass(frozen=True)
class PodHealth:
    """What the router remembers about one pod's health."""

    consecutive_failures: int = 0
    probe_misses: int = 0
    """Consecutive probes without a ready answer."""
    ejected_until: float = 0.0
    ejections: int = 0
    """Ejections in a row (the backoff level); 0 after a healthy period."""

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until


@dataclass(frozen=True)
class Ejection:
    """A decision to eject a pod: until when, and why."""

    until: float
    cause: Cause

    @property
    def abandons_calls(self) -> bool:
        """Calls on an unresponsive pod will never be answered: give up on them now (and retry
        them elsewhere). A not-ready pod still finishes what it has accepted."""
        return self.cause is Cause.UNRESPONSIVE


def ejection_allowed(ejected: int, pods: int, policy: OutlierPolicy) -> bool:
    """Whether one more of a tier's `pods` may be ejected while `ejected` are.

    e.g. 50%: 2 pods -> 1 may be out, 5 pods -> 2, 1 pod -> none (its errors still reach the
    client, but the tier is never emptied by a judgement of the router's).
    """
    limit = pods * policy.max_ejected_percent // 100
    if pods >= 2:
        limit = max(limit, 1)
    return ejected < limit


def _cause(health: PodHealth, outcome: Outcome, policy: OutlierPolicy) -> Cause | None:
    """The cause to eject for, once this outcome is counted, or None."""
    if outcome is Outcome.CONNECT:
        return Cause.CONNECT
    if (
        outcome in (Outcome.ERROR, Outcome.TIMEOUT)
        and health.consecutive_failures >= policy.consecutive_failures
    ):
        return Cause.ERRORS
    if health.probe_misses >= policy.consecutive_probe_misses:
        if outcome is Outcome.PROBE_MISSED:
            return Cause.UNRESPONSIVE
        if outcome is Outcome.PROBE_NOT_READY:
            return Cause.NOT_READY
    return None


def _counted(health: PodHealth, outcome: Outcome) -> PodHealth:
    """The counters after one outcome."""
    if outcome is Outcome.SUCCESS:
        return replace(health, consecutive_failures=0)
    if outcome in (Outcome.ERROR, Outcome.TIMEOUT):
        return replace(health, consecutive_failures=health.consecutive_failures + 1)
    if outcome is Outcome.PROBE_READY:
        return replace(health, probe_misses=0)
    if outcome in (Outcome.PROBE_MISSED, Outcome.PROBE_NOT_READY):
        return replace(health, probe_misses=health.probe_misses + 1)
    return health  # NEUTRAL, and CONNECT (which decides on its own)


def observe(
    health: PodHealth,
    outcome: Outcome,
    now: float,
    policy: OutlierPolicy,
    *,
    may_eject: bool,
) -> tuple[PodHealth, Ejection | None]:
    """Count one outcome; eject the pod when it crosses a threshold and `may_eject` (the tier's
    cap, see `ejection_allowed`) or its connection failed (it could not serve anyway).

    e.g. 4 errors in a row, then a 5th -> ejected 5 s; again after it returns -> 10 s. A pod
    already ejected is not ejected again, but missed probes keep it out until they stop.
    """
    health = _counted(health, outcome)
    cause = _cause(health, outcome, policy)
    if cause is None:
        return health, None
    if health.ejected(now):
        if cause is Cause.UNRESPONSIVE:
            held = max(health.ejected_until, now + policy.probe_hold_s)
            return replace(health, ejected_until=held), None
        return health, None
    if not may_eject and cause is not Cause.CONNECT:
        return health, None
    recent = health.ejections > 0 and now - health.ejected_until < policy.healthy_reset_s
    ejections = health.ejections + 1 if recent else 1
    until = now + policy.ejection_s(ejections)
    ejected = PodHealth(
        consecutive_failures=0,
        probe_misses=health.probe_misses,
        ejected_until=until,
        ejections=ejections,
    )
    return ejected, Ejection(until, cause)


def ejected_count(pods: list[PodHealth], now: float) -> int:
    """How many of a tier's pods are ejected now."""
    return sum(1 for pod in pods if pod.ejected(now))
