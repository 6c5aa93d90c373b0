"""The router process: its routing table, keys and discovery, and the endpoint's handlers.

A request passes the guards (API key -> body size -> rate limit), is parsed as an Images API
request, goes to the dispatcher (tier choice, limits, pod, retry, overflow), and its images or
its refusal are shaped by the HTTP layer. The routing table and the API keys are re-read every
second (ConfigMap and Secret volume updates); an invalid table keeps the previous one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from duotone_contracts.routing_table import RoutingTable, RoutingTableError, parse_routing_table
from duotone_router import guards, images
from duotone_router.discovery import Addresses, Discovery
from duotone_router.dispatch import Clock, Dispatcher
from duotone_router.keys import ApiKeys, load_api_keys
from duotone_router.metrics import RouterMetrics
from duotone_router.policy.reasons import Refused
from duotone_router.responses import error_response, openai_errors

log = logging.getLogger("duotone.router")

RELOAD_SECONDS = 1.0
"""How often the routing table and the API keys are re-read (ConfigMap/Secret volume updates)."""


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
        self.dispatcher = Dispatcher(
            self.table,
            self.metrics,
            clock=clock,
            rng=rng or random.Random(),  # noqa: S311 - a traffic split, not cryptography
        )
        self.keys: ApiKeys | None = None
        self.limiter = guards.RateLimiter()
        self.discovered = False
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
        self.table = table
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

    async def handle_generations(self, request: web.Request) -> web.Response:
        started = self.clock()
        request_id = request.headers.get(images.REQUEST_ID_HEADER) or uuid.uuid4().hex
        key, tier = guards.ANONYMOUS, "none"
        self.metrics.in_flight.inc()
        try:
            key = guards.authenticate(self.keys, request.headers.get("Authorization"))
            body = await guards.read_body(
                request.content_length, request.content.read, self.table.max_body_bytes
            )
            if self.keys is not None:  # an open endpoint has no keys to limit; docs/router.md
                self.limiter.admit(key, self.table.rate_limit, self.clock())
            parsed = images.parse_images_request(body)
            served = await self.dispatcher.dispatch(parsed, request_id)
            tier = served.tier
            self.dispatcher.record_latency(served.tier, self.clock() - started)
            answer = images.images_response(int(time.time()), served.pngs)
            headers = {
                images.TIER_HEADER: served.tier,
                images.DEGRADED_HEADER: "true" if served.route.degraded else "false",
                images.ROUTE_HEADER: served.route.kind,
                images.REQUEST_ID_HEADER: request_id,
            }
            self.metrics.requests.labels(tier, "200", key).inc()
            return web.json_response(answer, headers=headers)
        except Refused as refused:
            response = error_response(refused, request_id)
            self.metrics.requests.labels(tier, str(response.status), key).inc()
            return response
        except asyncio.CancelledError:
            self.metrics.cancelled.labels(tier).inc()
            self.metrics.requests.labels(tier, "499", key).inc()
            raise
        finally:
            self.metrics.in_flight.dec()

    async def handle_models(self, request: web.Request) -> web.Response:
        try:
            guards.authenticate(self.keys, request.headers.get("Authorization"))
        except Refused as refused:
            return error_response(refused, uuid.uuid4().hex)
        return web.json_response(images.models_response(self.table.tiers, int(time.time())))

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
