"""The router process: its routing table, keys and discovery, and the endpoint's handlers.

A request passes the guards (API key -> body size -> rate limit), is parsed as an Images API
request, goes to the dispatcher (tier choice, limits, pod, retry, overflow), and its images or
its refusal are shaped by the HTTP layer. The routing table and the API keys are re-read every
second (ConfigMap and Secret volume updates); an invalid table keeps the previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from duotone_contracts.api.v1alpha1 import TierName
from duotone_contracts.limits import GenerationRequest
from duotone_contracts.routing_table import RoutingTable, RoutingTableError, parse_routing_table
from duotone_router import forms, guards, images
from duotone_router.discovery import Addresses, Discovery
from duotone_router.dispatch import Clock, Dispatcher, Preview, Served
from duotone_router.edits import EditImages, decode_edit
from duotone_router.keys import ApiKeys, load_api_keys
from duotone_router.metrics import RouterMetrics
from duotone_router.policy.moderation import Blocklist, ModerationCheck
from duotone_router.policy.reasons import Reason, Refused
from duotone_router.responses import (
    ON_INTERNAL_ERROR,
    REQUEST_ID_KEY,
    error_answer,
    error_response,
    openai_errors,
)

log = logging.getLogger("duotone.router")

RELOAD_SECONDS = 1.0
"""How often the routing table and the API keys are re-read (ConfigMap/Secret volume updates)."""

CLIENT_REQUEST_ID_HEADER = "X-Client-Request-Id"
"""A client's own request id, echoed back when it is well formed; never used upstream."""
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
KEY_NAME_KEY = "duotone_key"
"""Where a handler keeps the caller's key name on the request (for the safety net's count)."""
SERVING_TIER_KEY: web.RequestKey[str] = web.RequestKey("duotone_serving_tier", str)
"""Where a streamed request keeps the tier serving it once its stream began (for its counts)."""


def route_headers(served: Served | Preview) -> dict[str, str]:
    """The headers that say which tier serves a request and how it got there."""
    return {
        images.TIER_HEADER: served.tier,
        images.DEGRADED_HEADER: "true" if served.route.degraded else "false",
        images.ROUTE_HEADER: served.route.kind,
    }


DRAIN_MARGIN_S = 5.0
"""After SIGTERM: how long beyond the longest tier deadline in-flight requests may take."""


def _single_mask(form: forms.Form) -> bytes | None:
    masks = form.files.get("mask", [])
    if len(masks) > 1:
        raise Refused(Reason.INVALID_VALUE, "mask: send at most one mask", param="mask")
    return masks[0] if masks else None


def client_request_id(value: str | None) -> str | None:
    """The client's `X-Request-Id` when it is safe to echo (1-128 of A-Z a-z 0-9 . _ : -),
    else None (pure). The router's own id names the request everywhere else."""
    if value is not None and CLIENT_REQUEST_ID.fullmatch(value):
        return value
    return None


class Router:
    """One router process: the current routing table, keys, rate buckets and tiers."""

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
        self.metrics = RouterMetrics()
        self._table_text = config_path.read_text()
        self.table: RoutingTable = parse_routing_table(self._table_text)
        self.moderation: ModerationCheck = Blocklist.of(self.table.moderation.blocked_terms)
        self.dispatcher = Dispatcher(
            self.table,
            self.metrics,
            clock=clock,
            rng=rng or random.Random(),  # noqa: S311 - a traffic split, not cryptography
        )
        self.keys: ApiKeys | None = None
        self.limiter = guards.RateLimiter()
        self.discovered = False
        self.draining = False
        """Set on SIGTERM: readiness fails and in-flight requests finish (`serve`)."""
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._discovery_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._apply_table(self.table)
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
        await self.dispatcher.close()

    def _restart_discovery(self) -> None:
        if self._discovery_task is not None:
            self._discovery_task.cancel()
        self.discovered = False
        self._discovery_task = asyncio.create_task(
            self.discovery.run(self.dispatcher.services(), self._on_addresses)
        )

    def _on_addresses(self, addresses: Addresses) -> None:
        self.dispatcher.on_addresses(addresses)
        self.discovered = True

    def _apply_table(self, table: RoutingTable) -> None:
        services_before = self.dispatcher.services()
        if table.rate_limit != self.table.rate_limit:
            self.limiter.follow(table.rate_limit, self.clock())
        self.table = table
        self.moderation = Blocklist.of(table.moderation.blocked_terms)
        self.dispatcher.configure(table)
        if self._discovery_task is not None and self.dispatcher.services() != services_before:
            self._restart_discovery()

    def _reload_keys(self) -> None:
        path = self.table.api_keys_path
        if path is None:
            self.keys = None
            return
        try:
            self.keys = load_api_keys(Path(path))
        except OSError as error:
            # Fail closed: with a key path configured and no readable keys, nobody gets in.
            log.error("cannot read API keys at %s: %s", path, error)
            self.keys = ApiKeys(())
        self.limiter.forget_except({name for name, _ in self.keys.keys})

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
            text = self._table_text
        if text != self._table_text:
            self._table_text = text
            try:
                table = parse_routing_table(text)
            except RoutingTableError as error:
                self.metrics.config_reloads.labels("invalid").inc()
                log.error("%s; keeping the previous routing table", error)
            else:
                self._apply_table(table)
                self.metrics.config_reloads.labels("ok").inc()
                log.info("routing table reloaded: %s", table.traffic.model_dump())
        self._reload_keys()

    # ------------------------------------------------------------------ HTTP

    async def handle_generations(self, request: web.Request) -> web.StreamResponse:
        async def parse(
            key: str, admit: Callable[[], None]
        ) -> tuple[images.ImagesRequest, EditImages | None]:
            body = await guards.read_body(
                request.content_length,
                request.content.read,
                self.table.max_body_bytes,
                content_encodings=request.headers.getall("Content-Encoding", ()),
            )
            admit()
            parsed = images.parse_images_request(body)
            self._moderate(parsed, key)
            return parsed, None

        return await self._serve(request, parse)

    async def handle_edits(self, request: web.Request) -> web.StreamResponse:
        async def parse(
            key: str, admit: Callable[[], None]
        ) -> tuple[images.ImagesRequest, EditImages | None]:
            limits = [
                (route.limits.max_input_image_bytes, route.limits.max_input_images)
                for route in self.table.tiers.values()
            ]
            body_limit, file_limit = forms.edit_body_limits(limits)
            form = await forms.read_form(request, limit=body_limit, file_limit=file_limit)
            admit()
            parsed = images.parse_edit_request(form.fields)
            self._moderate(parsed, key)
            # Decoding and resizing take milliseconds per megapixel: off the event loop.
            edit = await asyncio.to_thread(
                decode_edit, form.files.get("image", []), _single_mask(form), parsed.size
            )
            return parsed, edit

        return await self._serve(request, parse)

    def _moderate(self, parsed: images.ImagesRequest, key: str) -> None:
        verdict = self.moderation.verdict(parsed.prompt)
        if verdict is not None:
            self.metrics.moderation_blocked.labels(key).inc()
            raise Refused(Reason.MODERATION_BLOCKED, verdict, param="prompt")

    async def _serve(
        self,
        request: web.Request,
        parse: Callable[
            [str, Callable[[], None]], Awaitable[tuple[images.ImagesRequest, EditImages | None]]
        ],
    ) -> web.StreamResponse:
        """One Images API request: the key, `parse` (reads the body, calls its second argument
        to apply the rate limit, then returns the request and an edit's files, moderated),
        dispatch, the answer."""
        started = self.clock()
        request_id = uuid.uuid4().hex
        request[REQUEST_ID_KEY] = request_id
        headers = {images.REQUEST_ID_HEADER: request_id}
        echoed = client_request_id(request.headers.get(images.REQUEST_ID_HEADER))
        if echoed is not None:
            headers[CLIENT_REQUEST_ID_HEADER] = echoed
        key, tier = guards.ANONYMOUS, "none"
        self.metrics.in_flight.inc()
        self._in_flight += 1
        self._idle.clear()
        try:
            key = guards.authenticate(self.keys, request.headers.get("Authorization"))
            request[KEY_NAME_KEY] = key
            limited = self.keys is not None  # an open endpoint has no keys to limit

            def admit() -> None:
                if limited:
                    self.limiter.admit(key, self.table.rate_limit, self.clock())

            priority = guards.request_priority(
                request.headers.get(guards.PRIORITY_HEADER), self.table.key_priorities.get(key, 0)
            )
            parsed, edit = await parse(key, admit)
            dispatch = functools.partial(
                self.dispatcher.dispatch,
                parsed,
                request_id,
                allowed=self._allowed_tiers(key),
                admit=self._charge(key) if limited else None,
                edit=edit,
                priority=priority,
            )
            if parsed.stream:
                kind: images.StreamKind = "image_edit" if edit is not None else "image_generation"
                events = _EventStream(request, headers, kind)
                return await self._stream(events, dispatch, key=key, started=started)
            served = await dispatch()
            tier = served.tier
            result = served.generated
            answer = images.images_response(
                int(time.time()),
                served.request,
                served.tier,
                result.files,
                prompt_tokens=result.prompt_tokens,
                image_steps=result.image_steps,
            )
            self._count_served(served, key, started)
            return web.json_response(answer, headers=headers | route_headers(served))
        except Refused as refused:
            response = error_response(refused, request_id)
            response.headers.update({k: v for k, v in headers.items() if k not in response.headers})
            self.metrics.requests.labels(tier, str(response.status), key).inc()
            return response
        except asyncio.CancelledError:
            tier = request.get(SERVING_TIER_KEY, tier)
            self.metrics.cancelled.labels(tier).inc()
            self.metrics.requests.labels(tier, "499", key).inc()
            raise
        finally:
            self.metrics.in_flight.dec()
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _stream(
        self,
        events: _EventStream,
        dispatch: Callable[..., Coroutine[Any, Any, Served]],
        *,
        key: str,
        started: float,
    ) -> web.StreamResponse:
        """A streamed request (`stream: true`): Server-Sent Events, the previews as they come,
        then the image with its usage. The HTTP status is chosen with the first event: a
        refusal or failure before any preview is answered as JSON, like an unstreamed one;
        after one, it ends the stream as an `error` event. A client that hangs up cancels the
        call, so its tier stops computing it at the next step."""
        call = asyncio.create_task(dispatch(on_preview=events.arrive))
        try:
            await events.relay_until_done(call)
            try:
                served = call.result()
            except Refused as refused:
                stream, status = await events.fail(refused)  # raises it before any event
                tier = events.request.get(SERVING_TIER_KEY, "none")
                self.metrics.requests.labels(tier, str(status), key).inc()
                return stream
            stream = await events.complete(served)
            self._count_served(served, key, started)
            return stream
        except ConnectionResetError as error:
            # The client hung up between two events: as if it had while the request waited.
            raise asyncio.CancelledError from error
        finally:
            if not call.done():
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError, Refused):
                    await call

    def _count_served(self, served: Served, key: str, started: float) -> None:
        """A request answered with its images: its latency, its usage and its 200."""
        self.dispatcher.record_latency(served.tier, self.clock() - started)
        result = served.generated
        self.metrics.usage_tokens.labels(served.tier, key, "input").inc(result.prompt_tokens)
        self.metrics.usage_tokens.labels(served.tier, key, "output").inc(result.image_steps)
        self.metrics.requests.labels(served.tier, "200", key).inc()

    def _allowed_tiers(self, key: str) -> frozenset[TierName] | None:
        """The tiers `key` may use (None: every tier)."""
        tiers = self.table.key_tiers.get(key)
        return None if tiers is None else frozenset(tiers)

    def _charge(self, key: str) -> Any:
        """Charge a request's cost to `key` once its tier is known (cost depends on the tier's
        defaults); refuses when the key's work budget cannot cover it."""

        def charge(_tier: TierName, request: GenerationRequest) -> None:
            self.limiter.charge(key, self.table.rate_limit, request.cost(), self.clock())

        return charge

    def count_internal_error(self, request: web.Request) -> None:
        """The safety net's count: an unexpected failure is a 500 in the request metrics."""
        self.metrics.requests.labels(
            "none", "500", request.get(KEY_NAME_KEY, guards.ANONYMOUS)
        ).inc()

    async def handle_models(self, request: web.Request) -> web.Response:
        try:
            guards.authenticate(self.keys, request.headers.get("Authorization"))
        except Refused as refused:
            return error_response(refused, uuid.uuid4().hex)
        return web.json_response(images.models_response(self.table.tiers, int(time.time())))

    async def handle_healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def handle_readyz(self, _: web.Request) -> web.Response:
        if self.draining:
            return web.Response(status=503, text="draining: finishing in-flight requests\n")
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

    @property
    def in_flight(self) -> int:
        """Requests being handled now."""
        return self._in_flight

    def drain_timeout_s(self) -> float:
        """How long in-flight requests may take after SIGTERM: the longest tier deadline (a
        request may wait, retry and overflow within it) plus a margin."""
        deadlines = [route.request_timeout_ms / 1000 for route in self.table.tiers.values()]
        return max(deadlines, default=0.0) + DRAIN_MARGIN_S

    async def drained(self, timeout_s: float) -> bool:
        """Wait until no request is in flight, at most `timeout_s`; True when none is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return self._in_flight == 0


class _EventStream:
    """The Server-Sent Events of one streamed request: begun with its first event (the
    previews' or the answer's tier in its headers), each preview index sent once."""

    def __init__(
        self, request: web.Request, headers: dict[str, str], kind: images.StreamKind
    ) -> None:
        self.request = request
        self.headers = headers
        self.kind: images.StreamKind = kind
        self.stream: web.StreamResponse | None = None
        self.sent = -1
        """The highest preview index sent (a call retried on another pod sends them again)."""
        self._waiting: list[Preview] = []
        self._arrived = asyncio.Event()

    def arrive(self, preview: Preview) -> None:
        """The dispatcher's `on_preview`: keep it for `relay_until_done`."""
        self._waiting.append(preview)
        self._arrived.set()

    async def relay_until_done(self, call: asyncio.Task[Served]) -> None:
        """Send the previews as they arrive, until `call` is done (and those it left)."""
        while True:
            if not call.done():
                signal = asyncio.ensure_future(self._arrived.wait())
                try:
                    await asyncio.wait({call, signal}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    signal.cancel()
                self._arrived.clear()
            previews, self._waiting = self._waiting, []
            for preview in previews:
                await self._preview(preview)
            if call.done():
                return

    async def _preview(self, preview: Preview) -> None:
        partial = preview.partial
        if partial.partial_index <= self.sent or not partial.files:
            return
        stream = await self._begin(preview)
        event = images.partial_image_event(
            self.kind,
            int(time.time()),
            preview.request,
            preview.tier,
            partial.files[0],
            index=partial.partial_index,
        )
        await stream.write(images.sse(event))
        self.sent = partial.partial_index

    async def _begin(self, serving: Served | Preview) -> web.StreamResponse:
        if self.stream is None:
            self.request[SERVING_TIER_KEY] = serving.tier
            self.stream = web.StreamResponse(
                headers={
                    **self.headers,
                    "Content-Type": "text/event-stream",
                    "Cache-Control": "no-cache",
                    **route_headers(serving),
                }
            )
            await self.stream.prepare(self.request)
        return self.stream

    async def complete(self, served: Served) -> web.StreamResponse:
        """The answer's event, and the end of the stream."""
        stream = await self._begin(served)
        result = served.generated
        event = images.completed_event(
            self.kind,
            int(time.time()),
            served.request,
            served.tier,
            result.files[0],
            prompt_tokens=result.prompt_tokens,
            image_steps=result.image_steps,
        )
        await stream.write(images.sse(event))
        await stream.write_eof()
        return stream

    async def fail(self, refused: Refused) -> tuple[web.StreamResponse, int]:
        """End a begun stream with the refusal as an `error` event; returns it and the status
        the refusal stands for. Before any event, raises the refusal (answered as JSON)."""
        if self.stream is None:
            raise refused
        answer = error_answer(refused, self.request[REQUEST_ID_KEY])
        await self.stream.write(images.sse(images.error_event(answer.body)))
        await self.stream.write_eof()
        return self.stream, answer.status


def build_app(router: Router) -> web.Application:
    """The endpoint: the Images API, the model list, the probes and the OpenAPI document."""
    app = web.Application(middlewares=[openai_errors])
    app[ON_INTERNAL_ERROR] = router.count_internal_error
    app.add_routes(
        [
            web.post(images.GENERATIONS_PATH, router.handle_generations),
            web.post(images.EDITS_PATH, router.handle_edits),
            web.get(images.MODELS_PATH, router.handle_models),
            web.get("/healthz", router.handle_healthz),
            web.get("/readyz", router.handle_readyz),
            web.get("/openapi.json", router.handle_openapi),
        ]
    )

    async def lifecycle(_: web.Application) -> Any:
        await router.start()
        yield
        await router.stop()

    app.cleanup_ctx.append(lifecycle)
    return app


def build_metrics_app(router: Router) -> web.Application:
    """The metrics port: Prometheus' /metrics only (its series name API keys, so it is served
    apart from the endpoint and opened only to scrapers)."""
    app = web.Application()
    app.add_routes([web.get("/metrics", router.handle_metrics)])
    return app


async def serve(
    router: Router, host: str, port: int, metrics_port: int, stop: asyncio.Event
) -> None:
    """Serve until `stop` is set (SIGTERM), then drain: readiness fails, the listener closes,
    and in-flight requests finish within `Router.drain_timeout_s`. Client disconnects cancel
    their handler (and the upstream call)."""
    # Compressed bodies are refused (415) unread; aiohttp must not inflate them on its own.
    runner = web.AppRunner(
        build_app(router), handler_cancellation=True, access_log=None, auto_decompress=False
    )
    metrics_runner = web.AppRunner(build_metrics_app(router), access_log=None)
    await runner.setup()
    await metrics_runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    await web.TCPSite(metrics_runner, host, metrics_port).start()
    log.info("router listening on %s:%d (metrics on :%d)", host, port, metrics_port)
    try:
        await stop.wait()
        router.draining = True
        timeout_s = router.drain_timeout_s()
        log.info(
            "draining: %d requests in flight, waiting up to %.0fs", router.in_flight, timeout_s
        )
        await site.stop()
        finished = await router.drained(timeout_s)
        log.info("drained: %s", "every request finished" if finished else "deadline passed")
    finally:
        await runner.cleanup()
        await metrics_runner.cleanup()
