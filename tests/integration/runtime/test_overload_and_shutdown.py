"""Back-pressure and graceful shutdown, each on its own real tritonserver."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from duotone_runtime.client import ImageRequest
from tests.integration.runtime.conftest import (
    RuntimeServer,
    full,
    png_size,
    send_grpc,
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
        self.result = send_grpc(server, request)
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

    rejected = [send_grpc(server, full(f"overflow {i}")) for i in range(3)]
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
    (image,) = send_grpc(server, full("after the storm"))  # type: ignore[misc]
    assert png_size(image) == (64, 64)


def test_sigterm_drops_readiness_finishes_in_flight_requests_and_exits(
    start_server: Callable[..., RuntimeServer],
) -> None:
    exit_timeout = 60
    work = full("in flight", steps=8, width=128, height=128)
    server = start_server("shutdown", tiny_tier(max_batch_size=2), exit_timeout_secs=exit_timeout)
    in_flight = [start_and_wait_executing(server, work)]
    in_flight.append(InFlight(server, work))
    wait_until(
        lambda: server.metric("nv_inference_pending_request_count") == 1,
        10,
        "the second request to be queued",
    )
    process: Any = server.process
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    # Readiness (server and model) drops at once, so the pod leaves the Service's endpoints and
    # the router's pool and no new request is routed here during the drain.
    wait_until(lambda: not server.is_ready(), 10, "readiness to drop after SIGTERM")
    wait_until(lambda: not server.model_is_ready(), 10, "the model to report not ready")

    # Triton itself still serves a request that reaches it during the drain (it does not refuse
    # it): it must be answered whole or refused cleanly, never hang past the exit.
    late = send_grpc(server, full("too late"))
    assert isinstance(late, Exception) or png_size(late[0]) == (64, 64), late

    for flight in in_flight:
        result = flight.join()
        assert isinstance(result, list), result
        assert png_size(result[0]) == (128, 128)
    process.wait(timeout=exit_timeout + 10)
    assert time.monotonic() - signalled < exit_timeout + 5
    assert process.returncode == 0, server.log_tail()
