"""Triton over gRPC: one channel per pod, the pods of a tier, and what their errors mean.

A pool keeps one `tritonclient.grpc.aio` client per pod address and counts the requests this
router has outstanding on each, so `policy.routing.pick_backend` can send the next request to
the least loaded pod. Each pod carries its health (`policy.outliers.PodHealth`): the dispatcher
decides ejections from call outcomes and health probes; a pod only answers them and, when it is
found unresponsive, gives up on the calls it holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from duotone_contracts import triton
from duotone_contracts.limits import GenerationRequest
from duotone_router.policy.outliers import Outcome, PodHealth
from duotone_router.policy.routing import BackendLoad


class Failure(Enum):
    """What went wrong with one backend call, as far as routing cares."""

    CONNECT = "connect"
    """The pod could not be reached: the request never arrived, so another pod may serve it."""
    QUEUE_FULL = "queue_full"
    """Triton refused it at once: the pod's queue is full (the tier is saturated)."""
    TIMEOUT = "timeout"
    """The tier's deadline passed (in the router or in Triton's queue)."""
    INVALID = "invalid"
    """The model refused the inputs."""
    UNRESPONSIVE = "unresponsive"
    """The pod stopped answering its health probes while it held the request, which was given
    up there (generation is stateless: another pod may serve it)."""
    OTHER = "other"
    """An internal error, or a connection dropped mid-call (another pod may serve it)."""


OUTCOMES: Mapping[Failure, Outcome] = {
    Failure.CONNECT: Outcome.CONNECT,
    Failure.QUEUE_FULL: Outcome.NEUTRAL,
    Failure.TIMEOUT: Outcome.TIMEOUT,
    Failure.INVALID: Outcome.NEUTRAL,
    Failure.UNRESPONSIVE: Outcome.NEUTRAL,  # the probes that found it have counted already
    Failure.OTHER: Outcome.ERROR,
}
"""What each failed call says about the pod's health (`policy.outliers.observe`)."""


class BackendError(Exception):
    """A failed backend call, classified."""

    def __init__(self, failure: Failure, address: str, detail: str) -> None:
        super().__init__(f"{address}: {detail}")
        self.failure = failure
        self.address = address
        self.detail = detail


_CONNECT_MARKERS = (
    "failed to connect",
    "connection refused",
    "connect failed",
    "name resolution",
    "dns resolution",
    "no route to host",
    # A draining pod's gate refused it after SIGTERM: the request never ran there.
    triton.DRAINING_REFUSAL.lower(),
    # A pod whose model can no longer serve refused it at its gate: it never ran there, and the
    # pod is on its way out (readiness and liveness fail).
    triton.MODEL_FAILED_REFUSAL.lower(),
)


def classify(status: str, detail: str) -> Failure:
    """A gRPC status (e.g. "StatusCode.UNAVAILABLE") and Triton's message -> a Failure.

    Triton answers a full queue with UNAVAILABLE "Exceeds maximum queue size" and a request
    whose queue timeout expired with UNAVAILABLE "Request timeout expired"; gRPC reports a pod
    that cannot be reached as UNAVAILABLE "failed to connect to all addresses", and a pod
    draining after SIGTERM refuses new work with UNAVAILABLE "... shutting down ...". A connection
    that drops after the request was sent ("Socket closed") is OTHER: the pod may have started
    the work; it is OTHER, retried once like an internal error. A step-batched pod answers over
    a stream, whose error responses carry no status ("None"): a refusal naming a connect marker
    is CONNECT there, and one saying it cannot meet the request's deadline (refused before any
    step, `triton.DEADLINE_REFUSAL`) is QUEUE_FULL: the tier is saturated for this request.
    """
    text = detail.lower()
    if status == "None" and any(m in text for m in _CONNECT_MARKERS):
        return Failure.CONNECT  # an error response on a stream carries no status
    if "queue size" in text or triton.DEADLINE_REFUSAL.lower() in text:
        return Failure.QUEUE_FULL
    if "timeout" in text or status.endswith("DEADLINE_EXCEEDED"):
        return Failure.TIMEOUT
    if status.endswith("UNAVAILABLE") and any(m in text for m in _CONNECT_MARKERS):
        return Failure.CONNECT
    if status.endswith("INVALID_ARGUMENT"):
        return Failure.INVALID
    return Failure.OTHER


def triton_inputs(module: Any, values: Mapping[triton.InputSpec, Any]) -> list[Any]:
    """`values` as `module`'s InferInput list, in the contract's order and shapes (module:
    tritonclient.grpc.aio here; tritonclient.http or .grpc for other clients)."""
    inputs = []
    for spec in triton.INPUTS:
        if spec not in values:
            continue
        value = values[spec]
        if spec.binary:
            value = bytes(value)
        elif spec.data_type == "TYPE_STRING":
            value = str(value).encode("utf-8")
        array = np.array([value], dtype=triton.NUMPY_TYPES[spec.data_type])
        array = array.reshape(triton.REQUEST_SHAPE)
        tensor = module.InferInput(
            spec.name, list(array.shape), triton.CLIENT_TYPES[spec.data_type]
        )
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def infer_inputs(request: GenerationRequest) -> list[Any]:
    """Every input of a checked request, as the router sends them."""
    return triton_inputs(grpcaio, request.values())


@dataclass(frozen=True)
class Generated:
    """One answered inference: the image files and what they cost; or one of its previews."""

    files: list[bytes]
    prompt_tokens: int
    image_steps: int
    partial_index: int = triton.FINAL_INDEX
    """A preview's 0-based index (its files are previews); FINAL_INDEX for the answer."""


OnPartial = Callable[[Generated], None]
"""Called with each preview a streamed call receives before its answer."""


def generated(result: Any) -> Generated:
    """An inference result (any tritonclient's) as files and usage."""
    images = result.as_numpy(triton.IMAGES)
    index = result.as_numpy(triton.PARTIAL_INDEX)
    return Generated(
        files=[bytes(image) for image in images.reshape(-1)],
        prompt_tokens=int(result.as_numpy(triton.PROMPT_TOKENS).reshape(-1)[0]),
        image_steps=int(result.as_numpy(triton.STEPS_COMPUTED).reshape(-1)[0]),
        partial_index=triton.FINAL_INDEX if index is None else int(index.reshape(-1)[0]),
    )


class Backend:
    """One Triton pod: its gRPC client, its health and this router's outstanding calls on it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.client = grpcaio.InferenceServerClient(address)
        self.outstanding = 0
        self.health = PodHealth()
        self._calls: set[asyncio.Future[Any]] = set()
        self._abandoned: set[asyncio.Future[Any]] = set()

    def load(self, now: float) -> BackendLoad:
        return BackendLoad(self.address, self.outstanding, available=not self.health.ejected(now))

    async def generate(
        self,
        request: GenerationRequest,
        *,
        timeout_s: float,
        request_id: str,
        stream: bool = False,
        on_partial: OnPartial | None = None,
    ) -> Generated:
        """One inference; its files and usage, or BackendError. Cancelling the task cancels
        the RPC. `stream`: the tier's model is decoupled (step batching) and is called over a
        gRPC stream carrying this one request; the previews it sends before the answer go to
        `on_partial`."""
        previews = request.partial_images > 0
        outputs = [
            grpcaio.InferRequestedOutput(name)
            for name in triton.requested_outputs(previews=previews)
        ]
        self.outstanding += 1
        call = asyncio.ensure_future(
            self._streamed(request, outputs, timeout_s, request_id, on_partial)
            if stream
            else self._unary(request, outputs, timeout_s, request_id)
        )
        self._calls.add(call)
        try:
            result = await call
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if call in self._abandoned and (task is None or not task.cancelling()):
                raise BackendError(
                    Failure.UNRESPONSIVE, self.address, "given up: the pod stopped answering"
                ) from None
            call.cancel()
            raise
        except InferenceServerException as error:
            detail = str(error.message())
            failure = classify(str(error.status()), detail)
            raise BackendError(failure, self.address, detail) from error
        finally:
            self._calls.discard(call)
            self._abandoned.discard(call)
            self.outstanding -= 1
        return result

    async def _unary(
        self, request: GenerationRequest, outputs: list[Any], timeout_s: float, request_id: str
    ) -> Generated:
        result = await self.client.infer(
            triton.DEFAULT_MODEL_NAME,
            infer_inputs(request),
            outputs=outputs,
            request_id=request_id,
            client_timeout=timeout_s,
        )
        return generated(result)

    async def _streamed(
        self,
        request: GenerationRequest,
        outputs: list[Any],
        timeout_s: float,
        request_id: str,
        on_partial: OnPartial | None,
    ) -> Generated:
        """The answer to `request` sent over a gRPC stream, after its previews (each passed to
        `on_partial`). The stream stays open until the answer arrives; cancelling this
        coroutine cancels the stream, and so the request."""
        answered = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": triton.DEFAULT_MODEL_NAME,
                "inputs": infer_inputs(request),
                "outputs": outputs,
                "request_id": request_id,
            }
            await answered.wait()

        responses = self.client.stream_infer(requests(), stream_timeout=timeout_s)
        try:
            async for result, error in responses:
                if error is not None:
                    raise error
                answer = generated(result)
                if answer.partial_index == triton.FINAL_INDEX:
                    return answer
                if on_partial is not None:
                    on_partial(answer)
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
            raise InferenceServerException(msg=str(details), status=str(code)) from error
        except asyncio.CancelledError:
            responses.cancel()
            raise
        finally:
            answered.set()
        raise InferenceServerException(msg="the stream ended without a response")

    def abandon(self) -> int:
        """Give up on every call outstanding here (each raises UNRESPONSIVE to its caller, which
        may retry it elsewhere); returns how many."""
        calls = [c for c in self._calls if not c.done()]
        for call in calls:
            self._abandoned.add(call)
            call.cancel()
        return len(calls)

    async def probe(self, timeout_s: float) -> Outcome:
        """One health probe (gRPC ServerReady, which Triton answers only when its models are
        ready; the drain gate answers not ready once the pod drains)."""
        try:
            async with asyncio.timeout(timeout_s):
                ready = await self.client.is_server_ready(client_timeout=timeout_s)
        except (InferenceServerException, TimeoutError):
            return Outcome.PROBE_MISSED
        return Outcome.PROBE_READY if ready else Outcome.PROBE_NOT_READY

    async def close(self) -> None:
        await self.client.close()


@dataclass
class TierPool:
    """The pods of one tier."""

    tier: str
    backends: dict[str, Backend]
    turn: int = 0

    @classmethod
    def empty(cls, tier: str) -> TierPool:
        return cls(tier, {})

    def loads(self, now: float) -> list[BackendLoad]:
        return [b.load(now) for b in self.backends.values()]

    def ready_count(self, now: float) -> int:
        return sum(1 for b in self.backends.values() if b.load(now).available)

    def healths(self) -> list[PodHealth]:
        return [b.health for b in self.backends.values()]

    def update(self, addresses: Iterable[str]) -> list[Backend]:
        """Track exactly `addresses`; returns the removed backends (closed once idle)."""
        wanted = list(dict.fromkeys(addresses))
        removed = [b for a, b in self.backends.items() if a not in wanted]
        kept = {a: b for a, b in self.backends.items() if a in wanted}
        for address in wanted:
            if address not in kept:
                kept[address] = Backend(address)
        self.backends = kept
        return removed


async def close_when_idle(backends: Iterable[Backend], *, poll_s: float = 0.1) -> None:
    """Close removed backends after their in-flight requests finish (nothing is cut off)."""
    for backend in backends:
        while backend.outstanding > 0:
            await asyncio.sleep(poll_s)
        await backend.close()
