"""The drain gate: the tier's public HTTP and gRPC endpoints, in front of tritonserver.

Before Triton 2.55 (the nvidia-pytriton wheel's 2.51, the 25.01 container) tritonserver serves a
gRPC request that arrives after SIGTERM, and over HTTP it only stops accepting new connections;
a request that reaches a draining pod is served late, or cut off at the exit timeout. So
`duotone-runtime serve` runs tritonserver as its child on loopback ports and serves the pod's
ports itself, forwarding every HTTP request and gRPC call unchanged. On SIGTERM the gate:

1. reports not ready at once (HTTP 400 on the readiness paths, `ready: false` over gRPC);
2. refuses every new inference request: HTTP 503, gRPC UNAVAILABLE, both saying
   "shutting down" (the router retries it on another pod);
3. forwards SIGTERM to tritonserver, whose `--exit-timeout-secs` bounds the drain: requests
   already in Triton (running or queued) finish, then the server exits, and so does the gate
   with its exit status.

Which request is which is decided by the pure `http_route` and `grpc_route`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import sys
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from enum import Enum
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from duotone_contracts.triton import DRAINING_REFUSAL
from duotone_runtime.launcher import LOOPBACK, ServeOptions

GRPC_SERVICE = "/inference.GRPCInferenceService/"
GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
"""Batches of PNGs exceed gRPC's 4 MiB default; Triton itself sets no limit."""

SETTLE_SECONDS = 5.0
"""After tritonserver exits: how long the gate may take to pass its last answers on."""

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "host"}
)


class Route(Enum):
    """What the gate does with a request while draining (it forwards all of them before)."""

    READY = "ready"
    """A readiness probe: answered "not ready" by the gate."""
    LIVE = "live"
    """A liveness probe: answered "live" by the gate (draining is not hanging; tritonserver
    stops taking HTTP connections while it drains, and the exit timeout bounds the drain)."""
    INFER = "infer"
    """New work: refused."""
    FORWARD = "forward"
    """Liveness, metadata, statistics: still forwarded."""


_GRPC_ROUTES = {
    "ServerLive": Route.LIVE,
    "ServerReady": Route.READY,
    "ModelReady": Route.READY,
    "ModelInfer": Route.INFER,
    "ModelStreamInfer": Route.INFER,
}


def http_route(method: str, path: str) -> Route:
    """The route of an HTTP request to Triton's KServe v2 API (pure)."""
    parts = [part for part in path.split("/") if part]
    if parts == ["v2", "health", "ready"]:
        return Route.READY
    if parts == ["v2", "health", "live"]:
        return Route.LIVE
    if len(parts) >= 4 and parts[:2] == ["v2", "models"]:
        if method == "GET" and parts[-1] == "ready":
            return Route.READY
        if method == "POST" and parts[-1] in {"infer", "generate", "generate_stream"}:
            return Route.INFER
    return Route.FORWARD


def grpc_route(method: str) -> Route:
    """The route of a gRPC method such as `/inference.GRPCInferenceService/ModelInfer` (pure)."""
    if not method.startswith(GRPC_SERVICE):
        return Route.FORWARD
    return _GRPC_ROUTES.get(method.removeprefix(GRPC_SERVICE), Route.FORWARD)


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers minus the hop-by-hop ones each side sets for itself (pure)."""
    return {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}


def forwarded_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[tuple[str, Any]]:
    """gRPC metadata minus the transport's own keys (pure)."""
    return [
        (key, value)
        for key, value in metadata or ()
        if not key.startswith((":", "grpc-")) and key not in {"user-agent", "content-type"}
    ]


class Gate:
    """Open until `close()`; counts the requests it let through and those it refused."""

    def __init__(self) -> None:
        self.closed = False
        self.in_flight = 0
        self.refused = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def close(self) -> None:
        self.closed = True

    @contextlib.contextmanager
    def passing(self) -> Iterator[None]:
        self.in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def settled(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight (responses written back), at most `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return self.in_flight == 0


class HttpFront:
    """The public HTTP port: Triton's HTTP API, forwarded unless the gate is closed."""

    def __init__(self, gate: Gate, upstream: str) -> None:
        """`upstream`: tritonserver's HTTP host:port."""
        self.gate = gate
        self.upstream = f"http://{upstream}"
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def start(self) -> None:
        # One connection per request: Triton's drain waits for its open HTTP connections,
        # which must not include idle keep-alive ones held by the gate.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        route = http_route(request.method, request.path)
        if self.gate.closed and route is Route.READY:
            return web.Response(status=400)
        if self.gate.closed and route is Route.LIVE:
            return web.Response(status=200)
        if self.gate.closed and route is Route.INFER:
            self.gate.refused += 1
            return web.json_response({"error": DRAINING_REFUSAL}, status=503)
        assert self._session is not None, "start() first"
        with self.gate.passing():
            try:
                async with self._session.request(
                    request.method,
                    self.upstream + request.path_qs,
                    headers=forwarded_headers(request.headers),
                    data=await request.read(),
                    allow_redirects=False,
                ) as response:
                    body = await response.read()
                    return web.Response(
                        status=response.status,
                        body=body,
                        headers=forwarded_headers(response.headers),
                    )
            except aiohttp.ClientConnectionError as error:
                return web.json_response(
                    {"error": f"tritonserver is not reachable: {error}"}, status=503
                )


_CLOSED_ANSWERS = {
    Route.READY: b"",  # ServerReadyResponse / ModelReadyResponse {ready: false} (proto3 default)
    Route.LIVE: b"\x08\x01",  # ServerLiveResponse {live: true}: field 1, varint 1
}

UnaryBehavior = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


class GrpcFront(grpc.GenericRpcHandler):
    """The public gRPC port: every method of Triton's service, forwarded as raw bytes."""

    def __init__(self, gate: Gate, upstream: str) -> None:
        """`upstream`: tritonserver's gRPC host:port."""
        self.gate = gate
        self.channel = grpc.aio.insecure_channel(upstream, options=GRPC_OPTIONS)
        # grpc asks for a handler on every call: build one per method, not per call (bounded,
        # since a client may name any method).
        self._handler = functools.lru_cache(maxsize=64)(self._build_handler)

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes]:
        return self._handler(str(handler_call_details.method))

    def _build_handler(self, method: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        if method.endswith("/ModelStreamInfer"):
            return grpc.stream_stream_rpc_method_handler(self._stream(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    async def _answer_if_closed(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes | None:
        """The gate's own answer while closed (None: forward); aborts the call if it is new
        work."""
        if not self.gate.closed:
            return None
        route = grpc_route(method)
        if route is Route.INFER:
            self.gate.refused += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING_REFUSAL)
        return _CLOSED_ANSWERS.get(route)

    def _unary(self, method: str) -> UnaryBehavior:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(method)

        async def forward(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            answer = await self._answer_if_closed(method, context)
            if answer is not None:
                return answer
            with self.gate.passing():
                try:
                    response: bytes = await call(
                        request,
                        metadata=forwarded_metadata(context.invocation_metadata()),
                        timeout=context.time_remaining(),
                    )
                except grpc.aio.AioRpcError as error:
                    await context.abort(error.code(), error.details() or "")
                return response

        return forward

    def _stream(
        self, method: str
    ) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext[bytes, bytes]], Any]:
        call: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = self.channel.stream_stream(method)

        async def forward(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
        ) -> AsyncIterator[bytes]:
            await self._answer_if_closed(method, context)
            with self.gate.passing():
                upstream = call(
                    requests,
                    metadata=forwarded_metadata(context.invocation_metadata()),
                    timeout=context.time_remaining(),
                )
                try:
                    async for response in upstream:
                        yield response
                except grpc.aio.AioRpcError as error:
                    await context.abort(error.code(), error.details() or "")

        return forward

    async def close(self) -> None:
        await self.channel.close()


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it (a signal N becomes 128 + N) (pure)."""
    return 128 - returncode if returncode < 0 else returncode


async def supervise(command: Sequence[str], env: Mapping[str, str], options: ServeOptions) -> int:
    """Run tritonserver (`command`, from `prepare(options, ...)`) behind the gate, which listens
    on the options' address and HTTP/gRPC ports, until it exits; return its exit status."""
    gate = Gate()
    http = HttpFront(gate, f"{LOOPBACK}:{options.triton_http_port}")
    front = GrpcFront(gate, f"{LOOPBACK}:{options.triton_grpc_port}")
    await http.start()
    runner = web.AppRunner(http.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, options.address, options.http_port, reuse_address=True).start()
    server = grpc.aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers([front])
    if server.add_insecure_port(f"{options.address}:{options.grpc_port}") == 0:
        raise OSError(f"cannot listen on {options.address}:{options.grpc_port}")
    await server.start()
    children: list[asyncio.subprocess.Process] = []

    def drain(signum: int) -> None:
        if gate.closed:
            return
        gate.close()
        print(
            f"duotone-runtime: {signal.Signals(signum).name}: not ready, new requests refused; "
            f"{gate.in_flight} in flight; stopping tritonserver",
            file=sys.stderr,
            flush=True,
        )
        for child in children:
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, drain, signum)
    process = await asyncio.create_subprocess_exec(*command, env=dict(env))
    children.append(process)
    if gate.closed:  # told to stop while the server was starting
        process.send_signal(signal.SIGTERM)
    try:
        returncode = await process.wait()
    finally:
        gate.close()
        # Triton answered its last requests before exiting; let the gate write them back.
        await gate.settled(SETTLE_SECONDS)
        await server.stop(grace=None)
        await runner.cleanup()
        await http.close()
        await front.close()
    print(
        f"duotone-runtime: tritonserver exited with {returncode}; "
        f"requests refused while draining: {gate.refused}",
        file=sys.stderr,
        flush=True,
    )
    return exit_status(returncode)
