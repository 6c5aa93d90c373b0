"""Back-pressure and graceful shutdown, each on its own real tritonserver (behind the gate)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from duotone_contracts import triton
from duotone_router.backends import Failure, classify
from duotone_testbed.clients import ImageRequest
from duotone_testbed.local import answers_ok
from tests.integration.runtime.conftest import (
    RuntimeServer,
    full,
    png_size,
    send,
    tiny_tier,
    wait_until,
)

pytestmark = pytest.mark.integration

SLOW = full("slow", steps=8, width=128, height=128, num_images=2)
"""Several seconds of CPU work: long enough to hold the only instance while we probe."""


class InFlight:
    """A request running on a thread; its result arrives in `.result`."""

    def __init__(self, server: RuntimeServer, request: ImageRequest) -> None:
        self.result: list[bytes] | Exception | None = None
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(server, request))
        self._thread.start()

    def _run(self, server: RuntimeServer, request: ImageRequest) -> None:
        self.result = send(server, request)
        self.finished_at = time.monotonic()

    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float = 120) -> list[bytes] | Exception | None:
        self._thread.join(timeout)
        return self.result


def start_and_wait_executing(server: RuntimeServer, request: ImageRequest) -> InFlight:
    before = server.metric("duotone_execute_batch_requests_count")
    flight = InFlight(server, request)
    wait_until(
        lambda: server.metric("duotone_execute_batch_requests_count") > before,
        30,
        "the request to start executing",
    )
    return flight


def test_full_queue_rejects_at_once_and_stale_requests_never_run(
    start_server: Callable[..., RuntimeServer],
) -> None:
    server = start_server(
        "queue",
        tiny_tier(
            max_batch_size=1, max_queue_delay_ms=0, max_queue_size=1, request_timeout_ms=1000
        ),
    )
    running = start_and_wait_executing(server, SLOW)
    queued = InFlight(server, full("queued", steps=8, width=128, height=128, num_images=2))
    wait_until(
        lambda: server.metric("nv_inference_pending_request_count") == 1,
        10,
        "the second request to wait in the queue",
    )

    rejected = [send(server, full(f"overflow {i}")) for i in range(3)]
    assert running.running(), "the rejections should come back while the first request runs"
    for result in rejected:
        assert isinstance(result, Exception)
        assert "Exceeds maximum queue size" in str(result), result

    first = running.join()
    assert isinstance(first, list), first
    assert len(first) == 2
    stale = queued.join()
    # Queued for longer than requestTimeoutMs (1 s) behind a multi-second request: rejected
    # without running, so only the first request's two images were generated.
    assert isinstance(stale, Exception)
    assert "timeout" in str(stale).lower(), stale
    assert server.metric("duotone_images_generated_total") == 2
    assert server.is_ready()
    (image,) = send(server, full("after the storm"))  # type: ignore[misc]
    assert png_size(image) == (64, 64)


def test_sigterm_refuses_new_requests_finishes_in_flight_ones_and_exits(
    start_server: Callable[..., RuntimeServer],
) -> None:
    exit_timeout = 60
    work = full("in flight", steps=8, width=128, height=128)
    server = start_server("shutdown", tiny_tier(max_batch_size=2), exit_timeout_secs=exit_timeout)
    running = start_and_wait_executing(server, work)
    queued = InFlight(server, work)
    wait_until(
        lambda: server.metric("nv_inference_pending_request_count") == 1,
        10,
        "the second request to be queued",
    )
    process: Any = server.process
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    # Readiness (server and model) drops at once, so the pod leaves the Service's endpoints and
    # the router's pool.
    wait_until(lambda: not server.is_ready(), 10, "readiness to drop after SIGTERM")
    assert not server.model_is_ready()
    probe = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert not probe.is_server_ready()
        assert not probe.is_model_ready(triton.DEFAULT_MODEL_NAME)
        # Draining is not hanging: liveness holds, so the kubelet does not restart the pod.
        assert probe.is_server_live()
    finally:
        probe.close()
    assert answers_ok(f"http://{server.http_url}/v2/health/live")

    # A request that still arrives is refused at once, over either protocol, with a message
    # the router recognises as "try another pod"; it never reaches the model.
    late_grpc = send(server, full("too late"))
    assert isinstance(late_grpc, InferenceServerException), late_grpc
    assert late_grpc.status() == "StatusCode.UNAVAILABLE", late_grpc
    assert classify(late_grpc.status(), late_grpc.message()) is Failure.CONNECT, late_grpc
    late_http = send(server, full("too late"), via="http")
    assert isinstance(late_http, InferenceServerException), late_http
    assert "shutting down" in str(late_http.message()), late_http
    assert queued.running(), "the refusals must come back while the queued request waits"

    # Both requests accepted before the signal, the running one and the queued one, complete.
    for flight in (running, queued):
        result = flight.join()
        assert isinstance(result, list), result
        assert png_size(result[0]) == (128, 128)
    process.wait(timeout=exit_timeout + 10)
    assert time.monotonic() - signalled < exit_timeout + 5
    assert process.returncode == 0, server.log_tail()
    assert "requests refused while draining: 2" in server.log_tail(), server.log_tail()
    # Triton's own log: the model drained and unloaded before the exit.
    assert "successfully unloaded" in server.log_tail(200), server.log_tail()


def test_the_gate_exits_with_tritonserver_when_it_dies(
    start_server: Callable[..., RuntimeServer],
) -> None:
    """A crashed server must restart the pod, not leave a gate answering "not reachable"."""
    server = start_server("crash", tiny_tier())
    process: Any = server.process
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert len(children) == 1, children  # tritonserver (its stubs are its own children)
    triton = int(children[0])
    assert Path(f"/proc/{triton}/cmdline").read_bytes().split(b"\0")[0].endswith(b"tritonserver")
    os.kill(triton, signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == 128 + signal.SIGKILL, server.log_tail()
