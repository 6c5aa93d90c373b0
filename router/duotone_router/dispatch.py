"""Dispatch: which tier serves a request, on which pod, with retry and overflow.

Per request: tier choice (`policy.routing.choose_tier`) -> the limits of the tier it wanted ->
the least loaded pod (waiting, counted as pending, while the tier has none) -> one retry on
another pod when a connection fails -> when a pod's queue is full, the same choice placed again
(overflow or refusal per the policy), within the tier's deadline. Failures leave as `Refused`
reasons. State that changes at run time (routing table, pods) is swapped whole, so a request
keeps the view it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from duotone_contracts.api.v1alpha1 import TierName
from duotone_contracts.limits import GenerationRequest
from duotone_contracts.routing_table import RoutingTable
from duotone_router import images
from duotone_router.backends import (
    EJECT_SECONDS,
    Backend,
    BackendError,
    Failure,
    TierPool,
    close_when_idle,
)
from duotone_router.metrics import RouterMetrics
from duotone_router.policy.reasons import Reason, Refused
from duotone_router.policy.routing import (
    LatencyWindow,
    Route,
    TierLoad,
    TrafficPolicy,
    choose_tier,
    pick_backend,
    place,
)

log = logging.getLogger("duotone.router")

REJECTING_SECONDS = 1.0
"""After a pod refuses a request for a full queue, its tier counts as saturated this long."""

Clock = Callable[[], float]


@dataclass
class TierState:
    """Live view of one tier: its pods, recent latencies and whether it is refusing work."""

    pool: TierPool
    window: LatencyWindow = field(default_factory=LatencyWindow)
    rejecting_until: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def load(self, slo_p50_ms: float, now: float) -> TierLoad:
        return TierLoad(
            ready_backends=self.pool.ready_count(now),
            slo_p50_ms=slo_p50_ms,
            recent_p50_ms=self.window.p50(now),
            rejecting=now < self.rejecting_until,
        )


@dataclass(frozen=True)
class Served:
    """A request's images and the route that served them."""

    route: Route
    tier: TierName
    pngs: list[bytes]


def _refusal(route: Route) -> Refused:
    """A rejected route as a refusal; a tier the client named is the field at fault."""
    reason = route.refusal or Reason.TIER_SATURATED
    named = reason in (Reason.TIER_SELECTION_DISABLED, Reason.TIER_NOT_SERVED)
    return Refused(reason, route.reason, param="tier" if named else None)


_FAILURES: Mapping[Failure, tuple[Reason, str]] = {
    Failure.QUEUE_FULL: (Reason.TIER_SATURATED, "the {tier} tier is saturated: {detail}"),
    Failure.TIMEOUT: (
        Reason.DEADLINE_EXCEEDED,
        "the {tier} tier did not answer within its deadline: {detail}",
    ),
    Failure.CONNECT: (
        Reason.TIER_UNAVAILABLE,
        "no pod of the {tier} tier could be reached: {detail}",
    ),
    Failure.INVALID: (Reason.INVALID_VALUE, "{detail}"),
    Failure.OTHER: (Reason.UPSTREAM_FAILED, "the {tier} tier failed: {detail}"),
}
"""What each backend failure is refused as, and how it is said."""


def backend_refusal(tier: TierName, error: BackendError) -> Refused:
    """A failed backend call as a refusal, saying what happened in the tier's words."""
    reason, message = _FAILURES[error.failure]
    return Refused(reason, message.format(tier=tier, detail=error.detail))


class Dispatcher:
    """The tiers of one router: their pods and loads, and the path of each request to one."""

    def __init__(
        self, table: RoutingTable, metrics: RouterMetrics, *, clock: Clock, rng: random.Random
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.rng = rng
        self.table = table
        self.policy = TrafficPolicy.of(table.traffic)
        self.tiers: dict[TierName, TierState] = {}
        self._closing: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ the tiers and pods

    def configure(self, table: RoutingTable) -> None:
        """Serve the tiers of `table`; a removed tier's pods close once idle."""
        self.table = table
        self.policy = TrafficPolicy.of(table.traffic)
        for tier in table.tiers:
            self.tiers.setdefault(tier, TierState(TierPool.empty(tier)))
        for tier in [t for t in self.tiers if t not in table.tiers]:
            self._close_later(list(self.tiers.pop(tier).pool.backends.values()))
        self.metrics.show_config(table)

    def services(self) -> dict[str, TierName]:
        """Service name -> tier, what discovery watches."""
        return {route.service: tier for tier, route in self.table.tiers.items()}

    def on_addresses(self, addresses: Mapping[TierName, tuple[str, ...]]) -> None:
        """Discovery found these pods: track exactly them, wake requests waiting for one."""
        for tier, state in self.tiers.items():
            removed = state.pool.update(addresses.get(tier, ()))
            self._close_later(removed)
            self.metrics.backends.labels(tier).set(len(state.pool.backends))
            state.changed.set()
            state.changed = asyncio.Event()
        log.info("backends: %s", {t: list(s.pool.backends) for t, s in self.tiers.items()})

    def _close_later(self, backends: list[Backend]) -> None:
        """Close pods no longer routed to once their outstanding requests finish."""
        if backends:
            task = asyncio.create_task(close_when_idle(backends))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for state in self.tiers.values():
            await close_when_idle(state.pool.backends.values())

    def loads(self, now: float) -> dict[TierName, TierLoad]:
        return {
            tier: self.tiers[tier].load(route.slo.p50_latency_ms, now)
            for tier, route in self.table.tiers.items()
            if tier in self.tiers
        }

    # ------------------------------------------------------------------ one request

    def _route(self, parsed: images.ImagesRequest) -> Route:
        table = self.table
        requested = images.requested_tier(parsed, list(table.tiers))
        if (
            requested is not None
            and parsed.tier is None
            and parsed.model is None
            and not table.traffic.client_tier_selection
        ):
            requested = None  # `quality` is a hint; ignored when selection is off
        return choose_tier(requested, self.policy, self.loads(self.clock()), self.rng.random())

    def _prepare(
        self, parsed: images.ImagesRequest, tier: TierName, seed: int
    ) -> GenerationRequest:
        return images.generation_request(parsed, self.table.tiers[tier], seed_if_missing=seed)

    async def dispatch(self, parsed: images.ImagesRequest, request_id: str) -> Served:
        """Route, check limits, call a pod. Raises Refused."""
        route = self._route(parsed)
        if route.chosen is not None and route.refusal is not Reason.TIER_NOT_SERVED:
            self.metrics.demand.labels(route.chosen).inc()
        seed = self.rng.randrange(2**31)
        # The client's request must fit the tier it wanted (a field to fix comes before any
        # saturation) ...
        client_fault = (Reason.TIER_SELECTION_DISABLED, Reason.TIER_NOT_SERVED)
        if route.chosen is not None and route.refusal not in client_fault:
            prepared = self._prepare(parsed, route.chosen, seed)
        tier, chosen = route.tier, route.chosen
        if tier is None or chosen is None:
            raise _refusal(route)
        for attempt in range(2):
            if tier != chosen:
                # ... and an overflowed one must also fit the tier serving it, or it is refused.
                try:
                    prepared = self._prepare(parsed, tier, seed)
                except Refused as error:
                    raise Refused(
                        Reason.TIER_SATURATED,
                        f"{route.reason}; the request does not fit the {tier} tier "
                        f"({error.message})",
                    ) from error
            self.metrics.routes.labels(tier, route.kind).inc()
            if route.kind == "overflow":
                self.metrics.overflows.labels(chosen, tier).inc()
            try:
                pngs = await self._call_tier(tier, prepared, request_id)
            except BackendError as error:
                if error.failure is not Failure.QUEUE_FULL or attempt == 1:
                    raise backend_refusal(tier, error) from error
                # The pod refused the request at once (queue full): place the same choice
                # again with fresh loads, which overflows or rejects per the policy.
                kind: Literal["requested", "split"] = (
                    "requested" if route.kind == "requested" else "split"
                )
                route = place(chosen, kind, self.policy, self.loads(self.clock()))
                if route.tier is None:
                    raise _refusal(route) from error
                tier = route.tier
            else:
                return Served(route, tier, pngs)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call_tier(
        self, tier: TierName, request: GenerationRequest, request_id: str
    ) -> list[bytes]:
        deadline_s = self.table.tiers[tier].request_timeout_ms / 1000
        try:
            async with asyncio.timeout(deadline_s):
                return await self._call_pods(tier, request, request_id, deadline_s)
        except TimeoutError as error:
            raise BackendError(Failure.TIMEOUT, tier, f"no answer after {deadline_s:g}s") from error

    async def _next_pod(self, state: TierState, exclude: frozenset[str]) -> str | None:
        """The least loaded available pod. While the tier has none (scaled to zero, or every pod
        ejected) the request waits, counted as pending; None when only `exclude` is left."""
        while True:
            now = self.clock()
            state.pool.turn += 1
            address = pick_backend(state.pool.loads(now), exclude=exclude, turn=state.pool.turn)
            if address is not None:
                return address
            others = [b for a, b in state.pool.backends.items() if a not in exclude]
            if exclude and not others:
                return None
            ejected = [b.ejected_until - now for b in others if b.ejected_until > now]
            changed = state.changed
            self.metrics.pending.labels(state.pool.tier).inc()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=min(ejected, default=None))
            finally:
                self.metrics.pending.labels(state.pool.tier).dec()

    async def _call_pods(
        self, tier: TierName, request: GenerationRequest, request_id: str, deadline_s: float
    ) -> list[bytes]:
        state = self.tiers[tier]
        tried: frozenset[str] = frozenset()
        started = self.clock()
        while True:
            address = await self._next_pod(state, tried)
            if address is None:
                raise BackendError(Failure.CONNECT, tier, "no other pod to retry on")
            backend = state.pool.backends[address]
            outstanding = self.metrics.outstanding.labels(tier)
            outstanding.inc()
            try:
                remaining = max(0.001, deadline_s - (self.clock() - started))
                return await backend.generate(request, timeout_s=remaining, request_id=request_id)
            except BackendError as error:
                self.metrics.backend_errors.labels(tier, error.failure.value).inc()
                if error.failure is Failure.QUEUE_FULL:
                    state.rejecting_until = self.clock() + REJECTING_SECONDS
                if error.failure is Failure.CONNECT:
                    backend.ejected_until = self.clock() + EJECT_SECONDS
                if error.failure is not Failure.CONNECT or tried:
                    raise
                # It never reached the pod: try another one, once.
                self.metrics.retries.labels(tier).inc()
                tried = frozenset({address})
            finally:
                outstanding.dec()

    def record_latency(self, tier: TierName, seconds: float) -> None:
        state = self.tiers.get(tier)
        if state is not None:
            state.window = state.window.add(self.clock(), seconds * 1000)
        self.metrics.latency.labels(tier).observe(seconds)
