"""The drain gate: the tier's public HTTP and gRPC endpoints, in front of tritonserver.

Before Triton 2.55 (the nvidia-pytriton wheel's 2.51) tritonserver serves a gRPC request that
arrives after SIGTERM; later releases refuse it, in their own words, not in the refusal the
router retries elsewhere, and over HTTP every release still serves a kept-alive connection
while it drains. So `duotone-runtime serve` runs tritonserver as its child on loopback ports
and serves the pod's ports itself. It serves only what a tier pod is for: inference, health,
metadata and read-only statistics (an explicit allowlist, `http_route` and `grpc_route`, both
pure). Shared memory, model repository control, model configuration, trace and log settings,
and anything it does not know, are refused (HTTP 403/404 with a JSON error, gRPC
PERMISSION_DENIED or UNIMPLEMENTED); tritonserver restricts the same APIs itself
(`launcher.RESTRICTED_APIS`). Bodies and messages are bounded by the tier's limits
(`message_limits.py`), and what tritonserver could not parse is answered as the client's
error, not forwarded (`wire_checks.py`).

On SIGTERM the gate:

1. reports not ready at once (HTTP 400 on the readiness paths, `ready: false` over gRPC);
2. refuses every new inference request: HTTP 503, gRPC UNAVAILABLE, both saying
   "shutting down" (the router retries it on another pod). The decision is made when the
   request is about to be forwarded, after its body was read, and for every message of a gRPC
   stream: a stream open at SIGTERM takes no new message, while the responses to what it had
   already sent still flow back;
3. forwards SIGTERM to tritonserver, whose `--exit-timeout-secs` bounds the drain: requests
   already in Triton (running or queued) finish, then the server exits, and so does the gate
   with its exit status.

When the model reports that it can no longer serve (`model_health.py`), the gate answers not
ready and not live, so the kubelet restarts the container, and refuses new inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
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

from duotone_contracts.triton import DRAINING_REFUSAL, MODEL_FAILED_REFUSAL
from duotone_runtime.launcher import LOOPBACK, ServeOptions
from duotone_runtime.message_limits import MessageLimits, message_limits
from duotone_runtime.model_health import HealthFile
from duotone_runtime.wire_checks import grpc_message_problem, http_body_problem

GRPC_SERVICE = "/inference.GRPCInferenceService/"

SETTLE_SECONDS = 5.0
"""After tritonserver exits: how long the gate may take to pass its last answers on."""

NOT_SERVED = "duotone-runtime serves only inference, health, metadata and statistics"
UNKNOWN_API = "duotone-runtime: no such API"

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "te", "host"}
)


class Route(Enum):
    """What the gate does with a request."""

    READY = "ready"
    """A readiness probe: forwarded; answered "not ready" by the gate while draining or
    once the model failed."""
    LIVE = "live"
    """A liveness probe: forwarded; answered "live" while draining (draining is not hanging;
    tritonserver stops taking HTTP connections while it drains, and the exit timeout bounds
    the drain), "not live" once the model failed."""
    INFER = "infer"
    """New work: forwarded, refused while draining or once the model failed."""
    FORWARD = "forward"
    """Metadata and read-only statistics: always forwarded."""
    REFUSED = "refused"
    """A Triton API the gate does not serve: HTTP 403, gRPC PERMISSION_DENIED."""
    UNKNOWN = "unknown"
    """Not a Triton API: HTTP 404, gRPC UNIMPLEMENTED."""


_GRPC_ROUTES = {
    "ServerLive": Route.LIVE,
    "ServerReady": Route.READY,
    "ModelReady": Route.READY,
    "ModelInfer": Route.INFER,
    "ModelStreamInfer": Route.INFER,
    "ServerMetadata": Route.FORWARD,
    "ModelMetadata": Route.FORWARD,
    "ModelStatistics": Route.FORWARD,
    "ModelConfig": Route.REFUSED,
    "RepositoryIndex": Route.REFUSED,
    "RepositoryModelLoad": Route.REFUSED,
    "RepositoryModelUnload": Route.REFUSED,
    "SystemSharedMemoryStatus": Route.REFUSED,
    "SystemSharedMemoryRegister": Route.REFUSED,
    "SystemSharedMemoryUnregister": Route.REFUSED,
    "CudaSharedMemoryStatus": Route.REFUSED,
    "CudaSharedMemoryRegister": Route.REFUSED,
    "CudaSharedMemoryUnregister": Route.REFUSED,
    "TraceSetting": Route.REFUSED,
    "LogSettings": Route.REFUSED,
}

_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,128}")
"""A path segment the gate forwards: a model name or a keyword. No percent-escapes, so the
segments the gate routes on are exactly those tritonserver parses."""
_VERSION = re.compile(r"[0-9]{1,19}")
_SERVER_ROUTES = {
    ("GET", ()): Route.FORWARD,
    ("GET", ("health", "live")): Route.LIVE,
    ("GET", ("health", "ready")): Route.READY,
    ("GET", ("models", "stats")): Route.FORWARD,
}
_MODEL_ROUTES = {
    ("GET", ()): Route.FORWARD,
    ("GET", ("ready",)): Route.READY,
    ("GET", ("stats",)): Route.FORWARD,
    ("POST", ("infer",)): Route.INFER,
    ("POST", ("generate",)): Route.INFER,
    ("POST", ("generate_stream",)): Route.INFER,
}
_MODEL_REFUSED = {("config",), ("trace", "setting")}
_REFUSED_ROOTS = {"systemsharedmemory", "cudasharedmemory", "repository", "logging", "trace"}


def _v2_segments(path: str) -> tuple[str, ...] | None:
    """The segments after `/v2`, or None when `path` is not a plain `/v2/...` path."""
    parts = path.split("/")
    if parts[0] != "" or parts[1:2] != ["v2"]:
        return None
    if not all(_SEGMENT.fullmatch(part) and part not in {".", ".."} for part in parts[2:]):
        return None
    return tuple(parts[2:])


def _model_tail(rest: tuple[str, ...]) -> tuple[str, ...] | None:
    """What follows `models/<name>[/versions/<n>]`, or None when that prefix is malformed."""
    if len(rest) < 2 or rest[0] != "models":
        return None
    tail = rest[2:]
    if tail[:1] == ("versions",):
        if len(tail) < 2 or not _VERSION.fullmatch(tail[1]):
            return None
        tail = tail[2:]
    return tail


def http_route(method: str, path: str) -> Route:
    """The route of an HTTP request to Triton's KServe v2 API (pure). `path` is the raw path,
    without the query."""
    rest = _v2_segments(path)
    if rest is None:
        return Route.UNKNOWN
    if rest[:1] and rest[0] in _REFUSED_ROOTS:
        return Route.REFUSED
    if (route := _SERVER_ROUTES.get((method, rest))) is not None:
        return route
    tail = _model_tail(rest)
    if tail in _MODEL_REFUSED:
        return Route.REFUSED
    return Route.UNKNOWN if tail is None else _MODEL_ROUTES.get((method, tail), Route.UNKNOWN)


def grpc_route(method: str) -> Route:
    """The route of a gRPC method such as `/inference.GRPCInferenceService/ModelInfer` (pure)."""
    if not method.startswith(GRPC_SERVICE):
        return Route.UNKNOWN
    return _GRPC_ROUTES.get(method.removeprefix(GRPC_SERVICE), Route.UNKNOWN)


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers minus the hop-by-hop ones each side sets for itself (pure)."""
    return {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}


_METADATA_KEY = re.compile(r"[a-z0-9_.-]{1,64}")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]{0,4096}")


def forwarded_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> list[tuple[str, Any]]:
    """gRPC metadata minus the transport's own keys, binary values and anything malformed
    (pure): what reaches tritonserver is plain ASCII under a plain key."""
    return [
        (key, value)
        for key, value in metadata or ()
        if isinstance(key, str)
        and isinstance(value, str)
        and _METADATA_KEY.fullmatch(key)
        and _METADATA_VALUE.fullmatch(value)
        and not key.startswith(("grpc-", "triton-grpc-protocol-"))
        and key not in {"user-agent", "content-type", "te"}
    ]


def grpc_options(limits: MessageLimits) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(server options, channel options): the gate takes requests of at most the tier's
    largest and sends responses of at most its largest, and so does its channel to Triton
    the other way round (pure)."""
    server = [
        ("grpc.max_receive_message_length", limits.grpc_request_bytes),
        ("grpc.max_send_message_length", limits.response_bytes),
    ]
    channel = [
        ("grpc.max_send_message_length", limits.grpc_request_bytes),
        ("grpc.max_receive_message_length", limits.response_bytes),
    ]
    return server, channel


class Gate:
    """Open until `close()`; counts the requests it let through and those it refused, and
    knows whether the model still serves."""

    def __init__(self, health: HealthFile | None = None) -> None:
        self.closed = False
        self.in_flight = 0
        self.refused = 0
        self.health = health or HealthFile(None)
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = asyncio.Event()

    def close(self) -> None:
        self.closed = True
        self._closing.set()

    async def wait_closed(self) -> None:
        await self._closing.wait()

    def model_failure(self) -> str | None:
        return self.health.failure()

    def refusal(self) -> str | None:
        """Why new inference is refused now (None: it is admitted); counts the refusal."""
        if self.closed:
            reason = DRAINING_REFUSAL
        elif self.model_failure() is not None:
            reason = MODEL_FAILED_REFUSAL
        else:
            return None
        self.refused += 1
        return reason

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


def _error(message: str, status: int) -> web.Response:
    return web.json_response({"error": message}, status=status)


class HttpFront:
    """The public HTTP port: Triton's HTTP API, the allowed part of it."""

    def __init__(self, gate: Gate, upstream: str, max_body_bytes: int) -> None:
        """`upstream`: tritonserver's HTTP host:port."""
        self.gate = gate
        self.upstream = f"http://{upstream}"
        self.max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes)
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

    def _own_answer(self, route: Route, request: web.Request) -> web.Response | None:
        """The gate's answer to a request it does not forward (None: forward it)."""
        failure = self.gate.model_failure()
        answer: web.Response | None = None
        if route is Route.UNKNOWN:
            answer = _error(UNKNOWN_API, 404)
        elif route is Route.REFUSED:
            answer = _error(NOT_SERVED, 403)
        elif route is Route.READY and (self.gate.closed or failure is not None):
            answer = web.Response(status=400)
        elif route is Route.LIVE and failure is not None:
            answer = _error(f"the model can no longer serve: {failure}", 503)
        elif route is Route.LIVE and self.gate.closed:
            answer = web.Response(status=200)
        elif (request.content_length or 0) > self.max_body_bytes:
            answer = _error(f"request body exceeds {self.max_body_bytes} bytes", 413)
        elif request.headers.get("Content-Encoding", "identity").lower() != "identity":
            # Triton would inflate it past the body limit.
            answer = _error("compressed request bodies are not accepted", 415)
        elif route is Route.INFER and (refusal := self.gate.refusal()) is not None:
            answer = _error(refusal, 503)
        return answer

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # In flight from the first byte: a body still arriving at SIGTERM gets its refusal
        # before the gate stops.
        with self.gate.passing():
            return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        route = http_route(request.method, path)
        if (answer := self._own_answer(route, request)) is not None:
            return answer
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(f"request body exceeds {self.max_body_bytes} bytes", 413)
        if route is Route.INFER:
            header_length = request.headers.get("Inference-Header-Content-Length")
            if (problem := http_body_problem(body, header_length)) is not None:
                return _error(f"malformed inference request: {problem}", 400)
            # Decided again right before forwarding: the body may have taken a while to arrive.
            if (refusal := self.gate.refusal()) is not None:
                return _error(refusal, 503)
        return await self._forward(request, path, body)

    async def _forward(self, request: web.Request, path: str, body: bytes) -> web.Response:
        assert self._session is not None, "start() first"
        try:
            async with self._session.request(
                request.method,
                self.upstream + path,
                headers=forwarded_headers(request.headers),
                data=body,
                allow_redirects=False,
            ) as response:
                answer = await response.read()
                return web.Response(
                    status=response.status, body=answer, headers=forwarded_headers(response.headers)
                )
        except (aiohttp.ClientError, ValueError) as error:
            return _error(f"tritonserver is not reachable: {type(error).__name__}", 503)


_CLOSED_ANSWERS = {
    Route.READY: b"",  # ServerReadyResponse / ModelReadyResponse {ready: false} (proto3 default)
    Route.LIVE: b"\x08\x01",  # ServerLiveResponse {live: true}: field 1, varint 1
}
_NOT_LIVE = b""  # ServerLiveResponse {live: false}

UnaryBehavior = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


class GrpcFront(grpc.GenericRpcHandler):
    """The public gRPC port: the allowed methods of Triton's service, forwarded as raw bytes."""

    def __init__(
        self, gate: Gate, upstream: str, channel_options: Sequence[tuple[str, int]] = ()
    ) -> None:
        """`upstream`: tritonserver's gRPC host:port."""
        self.gate = gate
        self.channel = grpc.aio.insecure_channel(upstream, options=list(channel_options))
        # grpc asks for a handler on every call: build one per method, not per call (bounded:
        # only the service's own methods get one).
        self._handler = functools.lru_cache(maxsize=32)(self._build_handler)
        self._refused: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
            self._refuse
        )

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = str(handler_call_details.method)
        route = grpc_route(method)
        if route is Route.UNKNOWN:
            return None  # grpc answers UNIMPLEMENTED
        if route is Route.REFUSED:
            return self._refused
        return self._handler(method)

    def _build_handler(self, method: str) -> grpc.RpcMethodHandler[bytes, bytes]:
        if method.endswith("/ModelStreamInfer"):
            return grpc.stream_stream_rpc_method_handler(self._stream(method))
        return grpc.unary_unary_rpc_method_handler(self._unary(method))

    async def _refuse(self, _request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, NOT_SERVED)
        raise AssertionError("abort raises")

    async def _own_answer(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes | None:
        """The gate's own answer (None: forward); aborts the call if it is refused work."""
        route = grpc_route(method)
        failure = self.gate.model_failure()
        if route is Route.INFER and (refusal := self.gate.refusal()) is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, refusal)
        if route is Route.LIVE and failure is not None:
            return _NOT_LIVE
        if route is Route.READY and failure is not None:
            return _CLOSED_ANSWERS[Route.READY]
        return _CLOSED_ANSWERS.get(route) if self.gate.closed else None

    def _unary(self, method: str) -> UnaryBehavior:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(method)

        name = method.removeprefix(GRPC_SERVICE)

        async def forward(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            answer = await self._own_answer(method, context)
            if answer is not None:
                return answer
            if (problem := grpc_message_problem(name, request)) is not None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
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
            await self._own_answer(method, context)
            with self.gate.passing():
                upstream = call(
                    metadata=forwarded_metadata(context.invocation_metadata()),
                    timeout=context.time_remaining(),
                )
                pump = asyncio.create_task(self._pump(requests, upstream))
                try:
                    async for response in upstream:
                        yield response
                except grpc.aio.AioRpcError as error:
                    await context.abort(error.code(), error.details() or "")
                finally:
                    pump.cancel()
                    (ended,) = await asyncio.gather(pump, return_exceptions=True)
                if isinstance(ended, tuple):
                    await context.abort(*ended)

        return forward

    async def _pump(
        self, requests: AsyncIterator[bytes], upstream: grpc.aio.StreamStreamCall[bytes, bytes]
    ) -> tuple[grpc.StatusCode, str] | None:
        """Pass the client's messages on, each one admitted on its own, until the client
        closes its side (None) or the gate stops the stream: SIGTERM, a message that arrives
        after it, or a malformed message ends the stream with the status returned, once
        Triton has answered what it already had (its side is closed either way)."""
        closing = asyncio.ensure_future(self.gate.wait_closed())
        iterator = aiter(requests)
        message: asyncio.Future[bytes] | None = None
        try:
            while True:
                message = asyncio.ensure_future(anext(iterator))
                await asyncio.wait({message, closing}, return_when=asyncio.FIRST_COMPLETED)
                if not message.done():  # SIGTERM before the next message
                    return grpc.StatusCode.UNAVAILABLE, DRAINING_REFUSAL
                try:
                    data = message.result()
                except StopAsyncIteration:
                    return None
                if (refusal := self.gate.refusal()) is not None:
                    return grpc.StatusCode.UNAVAILABLE, refusal
                if (problem := grpc_message_problem("ModelStreamInfer", data)) is not None:
                    return grpc.StatusCode.INVALID_ARGUMENT, problem
                try:
                    await upstream.write(data)
                except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                    return None  # Triton ended the stream; its status reaches the client
        finally:
            closing.cancel()
            if message is not None:
                message.cancel()
            with contextlib.suppress(
                grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError
            ):
                await upstream.done_writing()

    async def close(self) -> None:
        await self.channel.close()


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it (a signal N becomes 128 + N) (pure)."""
    return 128 - returncode if returncode < 0 else returncode


async def supervise(command: Sequence[str], env: Mapping[str, str], options: ServeOptions) -> int:
    """Run tritonserver (`command`, from `prepare(options, ...)`) behind the gate, which listens
    on the options' address and HTTP/gRPC ports, until it exits; return its exit status."""
    limits = message_limits(options.tier.spec.limits)
    server_options, channel_options = grpc_options(limits)
    gate = Gate(HealthFile(options.health_file))
    http = HttpFront(gate, f"{LOOPBACK}:{options.triton_http_port}", limits.http_request_bytes)
    front = GrpcFront(gate, f"{LOOPBACK}:{options.triton_grpc_port}", channel_options)
    await http.start()
    runner = web.AppRunner(http.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, options.address, options.http_port, reuse_address=True).start()
    server = grpc.aio.server(options=server_options)
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
