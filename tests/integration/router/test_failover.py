"""A tier pod dies under load: requests it never accepted are retried on the other pod."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import pytest

from duotone_runtime.router.local import LocalStack
from tests.integration.router.conftest import (
    Answer,
    post_many,
    router_metric,
    start_stack,
    tiny_imd,
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Two efficient pods behind a router (no flagship)."""
    builder = tiny_imd("pair")
    builder._spec["tiers"].pop("flagship")
    builder._spec.pop("traffic")
    started = start_stack(tmp_path_factory.mktemp("pair"), builder, pods={"efficient": 2})
    try:
        yield started
    finally:
        started.stop()


def test_killing_a_pod_under_load_fails_only_what_it_had_accepted(pair: LocalStack) -> None:
    assert pair.router is not None
    victim = pair.servers["efficient"][0]
    assert victim.process is not None
    concurrency = 6

    async def scenario() -> tuple[list[Answer], float]:
        load = asyncio.create_task(
            post_many(pair.router.url, [{"prompt": f"k{i}"} for i in range(120)], concurrency)  # type: ignore[union-attr]
        )
        # Kill once the victim is serving (its Triton counted successes), mid-load.
        while victim.metric("nv_inference_request_success") < 5:
            await asyncio.sleep(0.05)
        assert victim.process is not None
        victim.process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        return await load, killed

    answers, killed = asyncio.run(scenario())
    failed = [a for a in answers if a.status != 200]
    # Only requests already sent to the victim when it died may fail: at most one per slot.
    assert len(failed) <= concurrency, [a.body for a in failed]
    assert all(a.started < killed + 0.5 for a in failed), "a request sent after the kill failed"
    assert all(a.status == 502 for a in failed), [a.status for a in failed]
    # Requests that met the dead pod before it was ejected went to the other one instead.
    assert router_metric(pair, "duotone_router_backend_retries_total", tier="efficient") >= 1
    assert sum(a.status == 200 for a in answers if a.started > killed + 0.5) > 0
