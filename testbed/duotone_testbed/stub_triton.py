"""A faulty tier pod for tests: a Triton gRPC endpoint that is live and ready but fails every
inference at once with INTERNAL, as a pod whose model broke (e.g. after a CUDA error) does.

    python -m duotone_testbed.stub_triton --port 8001

Health calls (ServerLive, ServerReady, ModelReady) answer true, so only the outcomes of real
calls can tell the router that this pod is an outlier.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from duotone_runtime.launcher import LOOPBACK

FAILURE_MESSAGE = "OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB (stub)"
"""What the stub's inferences fail with: model exception text no client should ever see."""


class FailingInferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Healthy to every probe; every inference fails at once."""

    def __init__(self) -> None:
        self.inferences = 0

    async def ServerLive(self, _request: Any, _context: Any) -> Any:  # noqa: N802 - gRPC's name
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, _request: Any, _context: Any) -> Any:  # noqa: N802 - gRPC's name
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(self, _request: Any, _context: Any) -> Any:  # noqa: N802 - gRPC's name
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelInfer(self, _request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
        self.inferences += 1
        await context.abort(grpc.StatusCode.INTERNAL, FAILURE_MESSAGE)


async def serve(address: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    service = FailingInferenceService()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    server.add_insecure_port(f"{address}:{port}")
    await server.start()
    print(f"stub triton listening on {address}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=None)
    print(f"stub triton failed {service.inferences} inferences", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.address, args.port))


if __name__ == "__main__":
    main()
