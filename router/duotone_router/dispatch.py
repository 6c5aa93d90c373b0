"""Dispatch: which tier serves a request, on which pod, with retry and overflow.

Per request: tier choice (`policy.routing.choose_tier`) -> the limits of the tier it wanted ->
the least loaded pod that is not ejected (waiting, counted as pending and capped per tier, while
the tier has none) -> one retry on another pod when the call failed on a connection, an internal
error or an unresponsive pod -> when a pod's queue is full, the same choice placed again
(overflow or refusal per the policy), within the tier's deadline. Every call's outcome and a
health probe of every pod each second feed the outlier policy (`policy.outliers`), which ejects
pods. Failures leave as `Refused` reasons that say nothing internal (the detail is logged with
the request id). State that changes at run time (routing table, pods) is swapped whole, so a
request keeps the view it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from duotone_contracts.api.v1alpha1 import TierName
from duotone_contracts.latency import LatencyWindow
from duotone_contracts.limits import GenerationRequest
from duotone_contracts.routing_table import RoutingTable
from duotone_router import images
from duotone_router.backends import (
    OUTCOMES,
    Backend,
    BackendError,
    Failure,
    Generated,
    OnPartial,
    TierPool,
    close_when_idle,
)
from duotone_router.edits import EditImages
from duotone_router.metrics import RouterMetrics
from duotone_router.policy.outliers import (
    Outcome,
    OutlierPolicy,
    ejected_count,
    ejection_allowed,
    observe,
)
from duotone_router.policy.reasons import Reason, Refused
from duotone_router.policy.routing import (
    Route,
    TierLoad,
    TrafficPolicy,
    allowed_loads,
    choose_tier,
    pending_refusal,
    pick_backend,
    place,
)

log = logging.getLogger("duotone.router")

REJECTING_SECONDS = 1.0
"""After a pod refuses a request for a full queue, its tier counts as saturated this long."""

PROBE_INTERVAL_S = 1.0
"""Every pod's health probe (gRPC ServerReady) starts this often: one small call per pod."""
PROBE_TIMEOUT_S = 1.0
"""A probe without an answer by then is a miss; two in a row eject the pod as unresponsive
(a frozen or blackholed pod is out within about 3 s, its calls retried elsewhere)."""

RETRIED: Mapping[Failure, str] = {
    Failure.CONNECT: "connect",
    Failure.OTHER: "error",
    Failure.UNRESPONSIVE: "unresponsive",
}
"""Failures retried once on another pod, and their `cause` label. A full queue takes the
overflow path instead; invalid inputs fail anywhere; a tier deadline leaves no time."""

Clock = Callable[[], float]


@dataclass
class TierState:
    """Live view of one tier: its pods, recent latencies and whether it is refusing work."""

    pool: TierPool
    window: LatencyWindow = field(default_factory=LatencyWindow)
    rejecting_until: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    pending: int = 0
    """Requests of this router waiting for a pod of the tier now."""

    def load(self, slo_p50_ms: float, now: float) -> TierLoad:
        return TierLoad(
            ready_backends=self.pool.ready_count(now),
            slo_p50_ms=slo_p50_ms,
            recent_p50_ms=self.window.p50(now),
            rejecting=now < self.rejecting_until,
        )


@dataclass(frozen=True)
class Preview:
    """A preview of a streamed request, with the route and the request as its tier runs it."""

    route: Route
    tier: TierName
    request: GenerationRequest
    partial: Generated


OnPreview = Callable[[Preview], None]


@dataclass(frozen=True)
class Served:
    """A request's images, the route that served them and the request as that tier ran it."""

    route: Route
    tier: TierName
    request: GenerationRequest
    generated: Generated


CLIENT_FAULTS = (Reason.TIER_SELECTION_DISABLED, Reason.TIER_NOT_SERVED, Reason.TIER_NOT_ALLOWED)
"""Refusals of a tier the client named (the field at fault is `tier`)."""

Admit = Callable[[TierName, GenerationRequest], None]
"""Charges a request's cost to its key once its tier is known; raises Refused when the key's
budget cannot cover it."""


def _refusal(route: Route) -> Refused:
    """A rejected route as a refusal; a tier the client named is the field at fault."""
    reason = route.refusal or Reason.TIER_SATURATED
    named = route.chosen is not None and reason in CLIENT_FAULTS
    return Refused(reason, route.reason, param="tier" if named else None)


_FAILURES: Mapping[Failure, tuple[Reason, str]] = {
    Failure.QUEUE_FULL: (Reason.TIER_SATURATED, "the {tier} tier is saturated: its queue is full"),
    Failure.TIMEOUT: (
        Reason.DEADLINE_EXCEEDED,
        "the {tier} tier did not answer within its deadline",
    ),
    Failure.CONNECT: (Reason.TIER_UNAVAILABLE, "no pod of the {tier} tier could be reached"),
    Failure.UNRESPONSIVE: (Reason.TIER_UNAVAILABLE, "the {tier} tier's pods stopped answering"),
    Failure.INVALID: (Reason.INVALID_VALUE, "{detail}"),
    Failure.OTHER: (Reason.UPSTREAM_FAILED, "the {tier} tier failed to generate the images"),
}
"""What each backend failure is refused as, and how it is said. A 5xx names the tier and what
went wrong, never a pod address, a gRPC status or the model's exception text (those go to the
log with the request id); a refused input (422) keeps the model's message, which names the
field to fix."""


def _previews_of(
    on_preview: OnPreview, route: Route, tier: TierName, request: GenerationRequest
) -> OnPartial:
    def relay(partial: Generated) -> None:
        on_preview(Preview(route, tier, request, partial))

    return relay


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
        self.outliers = OutlierPolicy()
        self._closing: set[asyncio.Task[None]] = set()
        self._probing: asyncio.Task[None] | None = None

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
            self._show_ejected(tier, state)
        log.info("backends: %s", {t: list(s.pool.backends) for t, s in self.tiers.items()})
        if self._probing is None:
            # Discovery calls this from the running loop: the first pods start the probes.
            self._probing = asyncio.create_task(self._probe_loop())

    def _close_later(self, backends: list[Backend]) -> None:
        """Close pods no longer routed to once their outstanding requests finish."""
        if backends:
            task = asyncio.create_task(close_when_idle(backends))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
        for state in self.tiers.values():
            await close_when_idle(state.pool.backends.values())

    # ------------------------------------------------------------------ pod health

    async def _probe_loop(self) -> None:
        """Probe every pod each PROBE_INTERVAL_S, concurrently, each bounded by PROBE_TIMEOUT_S."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.probe_all()
            await asyncio.sleep(max(0.0, PROBE_INTERVAL_S - (loop.time() - started)))

    async def probe_all(self) -> None:
        """One health probe of every pod; their outcomes feed the outlier policy."""
        probed = [
            (tier, backend)
            for tier, state in self.tiers.items()
            for backend in state.pool.backends.values()
        ]
        outcomes = await asyncio.gather(*(b.probe(PROBE_TIMEOUT_S) for _, b in probed))
        for (tier, backend), outcome in zip(probed, outcomes, strict=True):
            self._observe(tier, backend, outcome)
        for tier, state in self.tiers.items():
            self._show_ejected(tier, state)

    def _observe(self, tier: TierName, backend: Backend, outcome: Outcome) -> None:
        """Count one outcome of `backend`; eject it when the policy says so (within the tier's
        cap), and give up on its calls when it stopped answering."""
        state = self.tiers.get(tier)
        if state is None or state.pool.backends.get(backend.address) is not backend:
            return  # a pod no longer routed to
        now = self.clock()
        healths = state.pool.healths()
        allowed = ejection_allowed(ejected_count(healths, now), len(healths), self.outliers)
        backend.health, ejection = observe(
            backend.health, outcome, now, self.outliers, may_eject=allowed
        )
        if ejection is None:
            return
        abandoned = backend.abandon() if ejection.abandons_calls else 0
        self.metrics.ejections.labels(tier, ejection.cause.value).inc()
        self._show_ejected(tier, state)
        log.warning(
            "pod %s of the %s tier ejected for %.0fs (%s); %d calls given up there",
            backend.address,
            tier,
            ejection.until - now,
            ejection.cause.value,
            abandoned,
        )

    def _show_ejected(self, tier: TierName, state: TierState) -> None:
        self.metrics.ejected.labels(tier).set(ejected_count(state.pool.healths(), self.clock()))

    def loads(self, now: float) -> dict[TierName, TierLoad]:
        return {
            tier: self.tiers[tier].load(route.slo.p50_latency_ms, now)
            for tier, route in self.table.tiers.items()
            if tier in self.tiers
        }

    # ------------------------------------------------------------------ one request

    def _route(self, parsed: images.ImagesRequest, allowed: frozenset[TierName] | None) -> Route:
        table = self.table
        requested = images.requested_tier(parsed, list(table.tiers))
        if (
            requested is not None
            and parsed.tier is None
            and parsed.model is None
            and not table.traffic.client_tier_selection
        ):
            requested = None  # `quality` is a hint; ignored when selection is off
        loads = self.loads(self.clock())
        return choose_tier(requested, self.policy, loads, self.rng.random(), allowed)

    def _prepare(
        self, parsed: images.ImagesRequest, tier: TierName, seed: int, edit: EditImages | None
    ) -> GenerationRequest:
        return images.generation_request(
            parsed, self.table.tiers[tier], seed_if_missing=seed, edit=edit
        )

    async def dispatch(
        self,
        parsed: images.ImagesRequest,
        request_id: str,
        *,
        allowed: frozenset[TierName] | None = None,
        admit: Admit | None = None,
        edit: EditImages | None = None,
        priority: int = 0,
        on_preview: OnPreview | None = None,
    ) -> Served:
        """Route (within the tiers `allowed` to the client's key), check limits, charge the
        request's cost (`admit`, once, for the first tier that serves it), call a pod. `edit`:
        an edit's decoded files; `priority`: its admission priority in a step-batched tier;
        `on_preview`: gets a streamed request's previews (a retried call sends them again).
        Raises Refused."""
        route = self._route(parsed, allowed)
        unserved = (Reason.TIER_NOT_SERVED, Reason.TIER_NOT_ALLOWED)
        if route.chosen is not None and route.refusal not in unserved:
            self.metrics.demand.labels(route.chosen).inc()
        seed = self.rng.randrange(2**31)
        # The client's request must fit the tier it wanted (a field to fix comes before any
        # saturation) ...
        if route.chosen is not None and route.refusal not in CLIENT_FAULTS:
            prepared = self._prepare(parsed, route.chosen, seed, edit)
        tier, chosen = route.tier, route.chosen
        if tier is None or chosen is None:
            raise _refusal(route)
        for attempt in range(2):
            if tier != chosen:
                # ... and an overflowed one must also fit the tier serving it, or it is refused.
                try:
                    prepared = self._prepare(parsed, tier, seed, edit)
                except Refused as error:
                    raise Refused(
                        Reason.TIER_SATURATED,
                        f"{route.reason}; the request does not fit the {tier} tier "
                        f"({error.message})",
                    ) from error
            if admit is not None and attempt == 0:
                admit(tier, prepared)
            self.metrics.routes.labels(tier, route.kind).inc()
            if route.kind == "overflow":
                self.metrics.overflows.labels(chosen, tier).inc()
            on_partial = _previews_of(on_preview, route, tier, prepared) if on_preview else None
            try:
                result = await self._call_tier(
                    tier, dataclasses.replace(prepared, priority=priority), request_id, on_partial
                )
            except BackendError as error:
                if error.failure is not Failure.QUEUE_FULL or attempt == 1:
                    log.warning(
                        "request %s failed on the %s tier (%s) at %s: %s",
                        request_id,
                        tier,
                        error.failure.value,
                        error.address,
                        error.detail,
                    )
                    raise backend_refusal(tier, error) from error
                # The pod refused the request at once (queue full): place the same choice
                # again with fresh loads, which overflows or rejects per the policy.
                kind: Literal["requested", "split"] = (
                    "requested" if route.kind == "requested" else "split"
                )
                loads = allowed_loads(self.loads(self.clock()), allowed)
                route = place(chosen, kind, self.policy, loads)
                if route.tier is None:
                    raise _refusal(route) from error
                tier = route.tier
            else:
                return Served(route, tier, prepared, result)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call_tier(
        self,
        tier: TierName,
        request: GenerationRequest,
        request_id: str,
        on_partial: OnPartial | None = None,
    ) -> Generated:
        deadline_s = self.table.tiers[tier].request_timeout_ms / 1000
        calling: list[Backend] = []
        try:
            async with asyncio.timeout(deadline_s):
                return await self._call_pods(
                    tier, request, request_id, deadline_s, calling, on_partial=on_partial
                )
        except TimeoutError as error:
            if calling:  # the deadline passed while a pod held the request
                self._observe(tier, calling[-1], Outcome.TIMEOUT)
            raise BackendError(Failure.TIMEOUT, tier, f"no answer after {deadline_s:g}s") from error

    async def _next_pod(self, state: TierState, *, wait: bool) -> str | None:
        """The least loaded available pod. While the tier has none (scaled to zero, or every pod
        ejected) a first attempt waits, counted as pending (refused at once when the tier's
        pending cap is reached); None when `wait` is False and no pod is available."""
        waited = False
        while True:
            now = self.clock()
            state.pool.turn += 1
            address = pick_backend(state.pool.loads(now), turn=state.pool.turn)
            if address is not None or not wait:
                return address
            max_pending = self.table.max_pending_per_tier
            refusal = pending_refusal(state.pool.tier, state.pending, max_pending)
            if refusal is not None and not waited:  # one already waiting keeps its place
                self.metrics.pending_refusals.labels(state.pool.tier).inc()
                raise refusal
            waited = True
            backends = state.pool.backends.values()
            ejected = [b.health.ejected_until - now for b in backends if b.health.ejected(now)]
            changed = state.changed
            state.pending += 1
            self.metrics.pending.labels(state.pool.tier).inc()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=min(ejected, default=None))
            finally:
                state.pending -= 1
                self.metrics.pending.labels(state.pool.tier).dec()

    async def _call_pods(
        self,
        tier: TierName,
        request: GenerationRequest,
        request_id: str,
        deadline_s: float,
        calling: list[Backend],
        *,
        on_partial: OnPartial | None = None,
    ) -> Generated:
        """Call the least loaded pod; after a failure in RETRIED, once more on another pod that
        is available now (without waiting), else the first failure stands."""
        state = self.tiers[tier]
        stepped = self._stepped(tier)
        started = self.clock()
        failed: BackendError | None = None
        while True:
            if failed is None:
                address = await self._next_pod(state, wait=True)
            else:
                address = self._other_pod(state, failed.address)
                if address is None:
                    raise failed
                self.metrics.retries.labels(tier, RETRIED[failed.failure]).inc()
                log.info(
                    "request %s retried on %s after %s at %s: %s",
                    request_id,
                    address,
                    failed.failure.value,
                    failed.address,
                    failed.detail,
                )
            assert address is not None  # a first attempt waits for a pod
            backend = state.pool.backends[address]
            outstanding = self.metrics.outstanding.labels(tier)
            outstanding.inc()
            calling.append(backend)
            try:
                remaining = max(0.001, deadline_s - (self.clock() - started))
                # The pod's step loop drops (or refuses) what cannot be answered in time; only
                # it sends previews (a request-batched tier batches requests without them).
                sent = dataclasses.replace(
                    request,
                    deadline_ms=max(1, int(remaining * 1000)),
                    partial_images=request.partial_images if stepped else 0,
                )
                result = await backend.generate(
                    sent,
                    timeout_s=remaining,
                    request_id=request_id,
                    stream=stepped,
                    on_partial=on_partial,
                )
            except BackendError as error:
                calling.pop()
                self.metrics.backend_errors.labels(tier, error.failure.value).inc()
                self._observe(tier, backend, OUTCOMES[error.failure])
                if error.failure is Failure.QUEUE_FULL:
                    state.rejecting_until = self.clock() + REJECTING_SECONDS
                if error.failure not in RETRIED or failed is not None:
                    raise
                failed = error
            else:
                calling.pop()
                self._observe(tier, backend, Outcome.SUCCESS)
                return result
            finally:
                outstanding.dec()

    def _stepped(self, tier: TierName) -> bool:
        """Whether the tier batches steps (its model answers over a gRPC stream)."""
        route = self.table.tiers.get(tier)
        return route is not None and route.batching_mode == "step"

    def _other_pod(self, state: TierState, address: str) -> str | None:
        """An available pod other than `address` for a retry, or None."""
        state.pool.turn += 1
        loads = state.pool.loads(self.clock())
        return pick_backend(loads, exclude=frozenset({address}), turn=state.pool.turn)

    def record_latency(self, tier: TierName, seconds: float) -> None:
        state = self.tiers.get(tier)
        if state is not None:
            state.window = state.window.add(self.clock(), seconds * 1000)
        self.metrics.latency.labels(tier).observe(seconds)
