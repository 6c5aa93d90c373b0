"""A tier pod dies or drains under load: nothing fails. A draining pod (SIGTERM) finishes what
it had accepted and the router retries what it refused on the other pod; what a killed pod had
accepted is retried there too (generation is stateless)."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator

import pytest

from duotone_testbed.stack import LocalStack
from tests.integration.router.conftest import (
    Answer,
    post_many,
    router_metric,
    start_efficient_pair,
)


@pytest.fixture
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Two efficient pods behind a router (no flagship); a fresh pair for each test."""
    started = start_efficient_pair(tmp_path_factory.mktemp("pair"), "pair")
    try:
        yield started
    finally:
        started.stop()


async def load_and_signal(
    pair: LocalStack, signum: signal.Signals, concurrency: int
) -> tuple[list[Answer], float]:
    """120 requests at `concurrency`; `signum` to the first pod once it has served 5. Returns
    the answers and when the signal was sent."""
    assert pair.router is not None
    victim = pair.servers["efficient"][0]
    load = asyncio.create_task(
        post_many(pair.router.url, [{"prompt": f"k{i}"} for i in range(120)], concurrency)
    )
    while victim.metric("nv_inference_request_success") < 5:
        await asyncio.sleep(0.05)
    assert victim.process is not None
    victim.process.send_signal(signum)
    signalled = time.monotonic()
    return await load, signalled


def test_draining_a_pod_under_load_fails_nothing(pair: LocalStack) -> None:
    victim, survivor = pair.servers["efficient"]
    answers, _ = asyncio.run(load_and_signal(pair, signal.SIGTERM, concurrency=6))
    # In-flight and queued requests finish on the draining pod; new ones it refuses
    # ("shutting down") or, once it has exited, cannot be reached: both are retried elsewhere.
    assert [(a.status, a.body) for a in answers if a.status != 200] == []
    assert victim.process is not None
    assert victim.process.wait(timeout=60) == 0, victim.log_tail()
    # The router did send it new work while it drained, and its gate refused that work.
    refused = re.search(r"requests refused while draining: (\d+)", victim.log_tail(400))
    assert refused is not None, victim.log_tail()
    assert int(refused.group(1)) >= 1, refused.group(0)
    assert router_metric(pair, "duotone_router_backend_retries_total", tier="efficient") >= 1
    assert survivor.metric("nv_inference_request_success") > 0


def test_killing_a_pod_under_load_fails_nothing(pair: LocalStack) -> None:
    # Kill once the victim is serving (its Triton counted successes), mid-load.
    answers, killed = asyncio.run(load_and_signal(pair, signal.SIGKILL, concurrency=6))
    # Calls cut by the kill ("Socket closed") and calls that met the dead pod before it was
    # ejected ("failed to connect") were retried once on the other pod.
    assert [(a.status, a.body) for a in answers if a.status != 200] == []
    assert router_metric(pair, "duotone_router_backend_retries_total", tier="efficient") >= 1
    assert sum(a.status == 200 for a in answers if a.started > killed + 0.5) > 0
