"""Triton over gRPC: one channel per pod, the pods of a tier, and what their errors mean.

A pool keeps one `tritonclient.grpc.aio` client per pod address and counts the requests this
router has outstanding on each, so `policy.routing.pick_backend` can send the next request to
the least loaded pod. A pod whose connection fails is ejected for a few seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from duotone_operator.policy.routing import BackendLoad
from duotone_runtime import protocol
from duotone_runtime.validation import GenerationRequest

EJECT_SECONDS = 5.0
"""How long a pod whose connection failed gets no new requests."""


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
    OTHER = "other"


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
    "shutting down",  # the drain gate of a pod that got SIGTERM: the request never ran there
)


def classify(status: str, detail: str) -> Failure:
    """A gRPC status (e.g. "StatusCode.UNAVAILABLE") and Triton's message -> a Failure.

    Triton answers a full queue with UNAVAILABLE "Exceeds maximum queue size" and a request
    whose queue timeout expired with UNAVAILABLE "Request timeout expired"; gRPC reports a pod
    that cannot be reached as UNAVAILABLE "failed to connect to all addresses", and a pod
    draining after SIGTERM refuses new work with UNAVAILABLE "... shutting down ...". A connection
    that drops after the request was sent ("Socket closed") is OTHER: the pod may have started
    the work, so it is not retried.
    """
    text = detail.lower()
    if "queue size" in text:
        return Failure.QUEUE_FULL
    if "timeout" in text or status.endswith("DEADLINE_EXCEEDED"):
        return Failure.TIMEOUT
    if status.endswith("UNAVAILABLE") and any(m in text for m in _CONNECT_MARKERS):
        return Failure.CONNECT
    if status.endswith("INVALID_ARGUMENT"):
        return Failure.INVALID
    return Failure.OTHER


def _input(spec: protocol.InputSpec, value: Any) -> Any:
    array = protocol.input_array(spec, value)
    tensor = grpcaio.InferInput(spec.name, list(array.shape), protocol.CLIENT_TYPES[spec.data_type])
    tensor.set_data_from_numpy(array)
    return tensor


def infer_inputs(request: GenerationRequest) -> list[Any]:
    """All eight inputs, always: Triton batches only requests with the same set of inputs."""
    values = {
        protocol.PROMPT: request.prompt,
        protocol.NEGATIVE_PROMPT: request.negative_prompt,
        protocol.STEPS: request.steps,
        protocol.GUIDANCE_SCALE: request.guidance_scale,
        protocol.WIDTH: request.width,
        protocol.HEIGHT: request.height,
        protocol.SEED: request.seed,
        protocol.NUM_IMAGES: request.num_images,
    }
    return [_input(spec, values[spec]) for spec in protocol.INPUTS]


class Backend:
    """One Triton pod: its gRPC client and this router's outstanding requests on it."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.client = grpcaio.InferenceServerClient(address)
        self.outstanding = 0
        self.ejected_until = 0.0

    def load(self, now: float) -> BackendLoad:
        return BackendLoad(self.address, self.outstanding, available=now >= self.ejected_until)

    async def generate(
        self, request: GenerationRequest, *, timeout_s: float, request_id: str
    ) -> list[bytes]:
        """One inference; PNG files, or BackendError. Cancelling the task cancels the RPC."""
        outputs = [grpcaio.InferRequestedOutput(protocol.IMAGES)]
        self.outstanding += 1
        try:
            result = await self.client.infer(
                protocol.DEFAULT_MODEL_NAME,
                infer_inputs(request),
                outputs=outputs,
                request_id=request_id,
                client_timeout=timeout_s,
            )
        except InferenceServerException as error:
            detail = str(error.message())
            failure = classify(str(error.status()), detail)
            raise BackendError(failure, self.address, detail) from error
        finally:
            self.outstanding -= 1
        images = result.as_numpy(protocol.IMAGES)
        return [bytes(image) for image in images.reshape(-1)]

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
