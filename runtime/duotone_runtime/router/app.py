"""The router's HTTP shell: aiohttp handlers wiring guards, routing policy and backends.

Per request, in order: API key -> body size -> rate limit -> parse -> tier choice -> limits
of the tier -> backend call (least outstanding pod; one retry on another pod when a connection
fails; overflow when a pod's queue is full) -> OpenAI-shaped answer. Nothing reaches a backend
until every check has passed. State that changes at run time (routing table, API keys, pods)
is swapped whole, so a request keeps the view it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from duotone_operator.api.v1alpha1 import TierName
from duotone_operator.policy.ratelimit import TokenBucket, take
from duotone_operator.policy.routing import (
    LatencyWindow,
    Route,
    TierLoad,
    TrafficPolicy,
    choose_tier,
    pick_backend,
    place,
)
from duotone_runtime.router import images
from duotone_runtime.router.backends import (
    EJECT_SECONDS,
    Backend,
    BackendError,
    Failure,
    TierPool,
    close_when_idle,
)
from duotone_runtime.router.config import ConfigError, RouterConfig, parse_router_config
from duotone_runtime.router.discovery import Addresses, Discovery
from duotone_runtime.router.images import ApiError
from duotone_runtime.router.keys import ApiKeys, bearer_token, load_api_keys
from duotone_runtime.router.metrics import RouterMetrics
from duotone_runtime.validation import GenerationRequest

log = logging.getLogger("duotone.router")

REJECTING_SECONDS = 1.0
"""After a pod refuses a request for a full queue, its tier counts as saturated this long."""
RELOAD_SECONDS = 1.0
"""How often the routing table and the API keys are re-read (ConfigMap/Secret volume updates)."""
ANONYMOUS = "anonymous"

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


class Router:
    """One router process: the current routing table, keys, rate buckets and tier pools."""

    def __init__(
        self,
        config_path: Path,
        discovery: Discovery,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config_path = config_path
        self.discovery = discovery
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - a traffic split, not cryptography
        self.metrics = RouterMetrics()
        self._config_text = config_path.read_text()
        self.config: RouterConfig = parse_router_config(self._config_text)
        self.policy: TrafficPolicy = self.config.traffic.policy()
        self.keys: ApiKeys | None = None
        self.buckets: dict[str, TokenBucket] = {}
        self.tiers: dict[TierName, TierState] = {}
        self.discovered = False
        self._discovery_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._apply_config(self.config)
        self._reload_keys()
        self._restart_discovery()
        self._tasks.append(asyncio.create_task(self._reload_loop()))

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._discovery_task] if self._discovery_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for state in self.tiers.values():
            await close_when_idle(state.pool.backends.values())

    def _services(self) -> dict[str, TierName]:
        return {route.service: tier for tier, route in self.config.tiers.items()}

    def _restart_discovery(self) -> None:
        if self._discovery_task is not None:
            self._discovery_task.cancel()
        self.discovered = False
        self._discovery_task = asyncio.create_task(
            self.discovery.run(self._services(), self._on_addresses)
        )

    def _on_addresses(self, addresses: Addresses) -> None:
        for tier, state in self.tiers.items():
            removed = state.pool.update(addresses.get(tier, ()))
            self._close_later(removed)
            self.metrics.backends.labels(tier).set(len(state.pool.backends))
            state.changed.set()
            state.changed = asyncio.Event()
        self.discovered = True
        log.info("backends: %s", {t: list(s.pool.backends) for t, s in self.tiers.items()})

    def _close_later(self, backends: list[Backend]) -> None:
        """Close pods no longer routed to once their outstanding requests finish."""
        if backends:
            task = asyncio.create_task(close_when_idle(backends))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def _apply_config(self, config: RouterConfig) -> None:
        services_before = self._services()
        self.config = config
        self.policy = config.traffic.policy()
        for tier in config.tiers:
            self.tiers.setdefault(tier, TierState(TierPool.empty(tier)))
        for tier in [t for t in self.tiers if t not in config.tiers]:
            self._close_later(list(self.tiers.pop(tier).pool.backends.values()))
        self.metrics.show_config(config)
        if self._discovery_task is not None and self._services() != services_before:
            self._restart_discovery()

    def _reload_keys(self) -> None:
        path = self.config.api_keys_path
        if path is None:
            self.keys = None
            return
        try:
            self.keys = load_api_keys(Path(path))
        except OSError as error:
            # Fail closed: with a key path configured and no readable keys, nobody gets in.
            log.error("cannot read API keys at %s: %s", path, error)
            self.keys = ApiKeys(())

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_SECONDS)
            self.reload()

    def reload(self) -> None:
        """Re-read the routing table and keys; an invalid table keeps the previous one."""
        try:
            text = self.config_path.read_text()
        except OSError as error:
            log.error("cannot read routing table %s: %s", self.config_path, error)
            text = self._config_text
        if text != self._config_text:
            self._config_text = text
            try:
                config = parse_router_config(text)
            except ConfigError as error:
                self.metrics.config_reloads.labels("invalid").inc()
                log.error("%s; keeping the previous routing table", error)
            else:
                self._apply_config(config)
                self.metrics.config_reloads.labels("ok").inc()
                log.info("routing table reloaded: %s", config.traffic.model_dump())
        self._reload_keys()

    # ------------------------------------------------------------------ guards

    def _authenticate(self, request: web.Request) -> str:
        if self.keys is None:
            return ANONYMOUS
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            raise ApiError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="missing_api_key",
            )
        name = self.keys.identify(token)
        if name is None:
            raise ApiError(
                401, "invalid API key", type="authentication_error", code="invalid_api_key"
            )
        return name

    def _admit(self, key: str) -> None:
        if self.keys is None:
            return  # an open endpoint has no keys to limit; see docs/router.md
        limit = self.config.rate_limit
        now = self.clock()
        bucket = self.buckets.get(key) or TokenBucket.full(
            requests_per_minute=limit.requests_per_minute_per_key, burst=limit.burst, now=now
        )
        admission, self.buckets[key] = take(bucket, now)
        if not admission.allowed:
            raise ApiError(
                429,
                f"rate limit of {limit.requests_per_minute_per_key} requests per minute "
                f"exceeded for key {key!r}",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                retry_after_s=admission.retry_after_s,
            )

    async def _body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        too_large = ApiError(
            413, f"body: larger than the limit of {limit} bytes", param="body", code="too_large"
        )
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            raise too_large
        return body

    # ------------------------------------------------------------------ routing

    def loads(self, now: float) -> dict[TierName, TierLoad]:
        return {
            tier: self.tiers[tier].load(route.slo.p50_latency_ms, now)
            for tier, route in self.config.tiers.items()
            if tier in self.tiers
        }

    def _route(self, parsed: images.ImagesRequest) -> Route:
        config = self.config
        requested = images.requested_tier(parsed, list(config.tiers))
        if (
            requested is not None
            and parsed.tier is None
            and parsed.model is None
            and not config.traffic.client_tier_selection
        ):
            requested = None  # `quality` is a hint; ignored when selection is off
        return choose_tier(requested, self.policy, self.loads(self.clock()), self.rng.random())

    def _prepare(
        self, parsed: images.ImagesRequest, tier: TierName, seed: int
    ) -> GenerationRequest:
        return images.generation_request(parsed, self.config.tiers[tier], seed_if_missing=seed)

    @staticmethod
    def _rejection(route: Route) -> ApiError:
        if route.status == 403:
            return ApiError(403, route.reason, type="permission_error", param="tier")
        if route.status == 422:
            return ApiError(422, route.reason, param="tier", code="invalid_value")
        return unavailable(route.reason)

    async def generate(
        self, parsed: images.ImagesRequest, request_id: str
    ) -> tuple[Route, list[bytes]]:
        """Route, check limits, call a pod. Raises ApiError."""
        route = self._route(parsed)
        if route.chosen is not None and route.status != 422:
            self.metrics.demand.labels(route.chosen).inc()
        seed = self.rng.randrange(2**31)
        # The client's request must fit the tier it wanted (422 is the client's to fix, and
        # comes before any 503) ...
        if route.chosen is not None and route.status not in (403, 422):
            prepared = self._prepare(parsed, route.chosen, seed)
        if route.tier is None or route.chosen is None:
            raise self._rejection(route)
        for attempt in range(2):
            if route.tier != route.chosen:
                # ... and an overflowed one must also fit the tier serving it, or it is refused.
                try:
                    prepared = self._prepare(parsed, route.tier, seed)
                except ApiError as error:
                    raise unavailable(
                        f"{route.reason}; the request does not fit the {route.tier} tier "
                        f"({error.message})"
                    ) from error
            self.metrics.routes.labels(route.tier, route.kind).inc()
            if route.kind == "overflow":
                self.metrics.overflows.labels(route.chosen, route.tier).inc()
            try:
                return route, await self._call_tier(route, prepared, request_id)
            except BackendError as error:
                if error.failure is not Failure.QUEUE_FULL or attempt == 1:
                    raise self._backend_error(route.tier, error) from error
                # The pod refused the request at once (queue full): place the same choice
                # again with fresh loads, which overflows or rejects per the policy.
                kind: Literal["requested", "split"] = (
                    "requested" if route.kind == "requested" else "split"
                )
                route = place(route.chosen, kind, self.policy, self.loads(self.clock()))
                if route.tier is None:
                    raise self._rejection(route) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def _backend_error(self, tier: TierName, error: BackendError) -> ApiError:
        if error.failure is Failure.QUEUE_FULL:
            return unavailable(f"the {tier} tier is saturated: {error.detail}")
        if error.failure is Failure.TIMEOUT:
            return ApiError(
                504,
                f"the {tier} tier did not answer within its deadline: {error.detail}",
                type="server_error",
                code="deadline_exceeded",
            )
        if error.failure is Failure.CONNECT:
            return unavailable(
                f"no pod of the {tier} tier could be reached: {error.detail}",
                code="tier_unavailable",
            )
        if error.failure is Failure.INVALID:
            return ApiError(422, error.detail, code="invalid_value")
        return ApiError(
            502, f"the {tier} tier failed: {error.detail}", type="server_error", code="upstream"
        )

    async def _call_tier(
        self, route: Route, request: GenerationRequest, request_id: str
    ) -> list[bytes]:
        assert route.tier is not None
        tier = route.tier
        deadline_s = self.config.tiers[tier].request_timeout_ms / 1000
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

    # ------------------------------------------------------------------ HTTP

    async def handle_generations(self, request: web.Request) -> web.Response:
        started = self.clock()
        request_id = request.headers.get(images.REQUEST_ID_HEADER) or uuid.uuid4().hex
        key, tier = ANONYMOUS, "none"
        self.metrics.in_flight.inc()
        try:
            key = self._authenticate(request)
            body = await self._body(request)
            self._admit(key)
            parsed = images.parse_images_request(body)
            route, pngs = await self.generate(parsed, request_id)
            assert route.tier is not None
            tier = route.tier
            self.record_latency(route.tier, self.clock() - started)
            answer = images.images_response(int(time.time()), pngs)
            headers = {
                images.TIER_HEADER: route.tier,
                images.DEGRADED_HEADER: "true" if route.degraded else "false",
                images.ROUTE_HEADER: route.kind,
                images.REQUEST_ID_HEADER: request_id,
            }
            self.metrics.requests.labels(tier, "200", key).inc()
            return web.json_response(answer, headers=headers)
        except ApiError as error:
            self.metrics.requests.labels(tier, str(error.status), key).inc()
            return error_response(error, request_id)
        except asyncio.CancelledError:
            self.metrics.cancelled.labels(tier).inc()
            self.metrics.requests.labels(tier, "499", key).inc()
            raise
        finally:
            self.metrics.in_flight.dec()

    async def handle_models(self, request: web.Request) -> web.Response:
        try:
            self._authenticate(request)
        except ApiError as error:
            return error_response(error, uuid.uuid4().hex)
        return web.json_response(images.models_response(self.config.tiers, int(time.time())))

    async def handle_healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def handle_readyz(self, _: web.Request) -> web.Response:
        if not self.discovered:
            return web.Response(status=503, text="waiting for backend discovery\n")
        return web.Response(text="ready\n")

    async def handle_metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def handle_openapi(self, _: web.Request) -> web.Response:
        return web.json_response(images.openapi_document())


def unavailable(message: str, code: str = "tier_saturated") -> ApiError:
    """503 with Retry-After: by then the tier's queue-full mark has expired."""
    return ApiError(
        503,
        message,
        type="overloaded_error",
        code=code,
        retry_after_s=max(1, round(REJECTING_SECONDS)),
    )


def error_response(error: ApiError, request_id: str) -> web.Response:
    headers = {images.REQUEST_ID_HEADER: request_id}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    return web.json_response(error.body(), status=error.status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own 404/405 answers in the OpenAI error shape too."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        api_error = ApiError(
            error.status,
            f"{request.method} {request.path}: {error.reason}",
            type="not_found_error" if error.status == 404 else "invalid_request_error",
        )
        return error_response(api_error, uuid.uuid4().hex)


def build_app(router: Router) -> web.Application:
    app = web.Application(middlewares=[openai_errors])
    app.add_routes(
        [
            web.post(images.GENERATIONS_PATH, router.handle_generations),
            web.get(images.MODELS_PATH, router.handle_models),
            web.get("/healthz", router.handle_healthz),
            web.get("/readyz", router.handle_readyz),
            web.get("/metrics", router.handle_metrics),
            web.get("/openapi.json", router.handle_openapi),
        ]
    )

    async def lifecycle(_: web.Application) -> Any:
        await router.start()
        yield
        await router.stop()

    app.cleanup_ctx.append(lifecycle)
    return app


async def serve(router: Router, host: str, port: int) -> None:
    """Run until cancelled. Client disconnects cancel their handler (and the upstream call)."""
    runner = web.AppRunner(build_app(router), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("router listening on %s:%d", host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
