"""A router told to stop (SIGTERM, as in a rollout) finishes every request it has in flight.

The requests are held in flight deterministically, not by making them slow: the router starts
with no pod for the tier, so they wait in it (as for a tier scaling up from zero); the pods are
handed to it only after SIGTERM, while it drains.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from duotone_contracts import metrics as m
from duotone_testbed.clients import metric_sum, scrape_metrics
from duotone_testbed.stack import LocalRouter, LocalStack
from tests.integration.router.conftest import Answer, post
from tests.support.cluster import wait_for

IN_FLIGHT = 8
REQUEST = {"prompt": "drain", "tier": "efficient"}


def _refuses_connections(url: str) -> bool:
    """No new connection is served: refused, or reset when the listener closed with the
    connection still in its backlog (the race of a probe with the close itself). A probe that
    times out proves nothing either way (a connection the closing listener took but never
    answered, or a slow machine): False, and the caller probes again."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2):  # noqa: S310 - loopback
            return False
    except urllib.error.URLError as error:
        return isinstance(error.reason, ConnectionRefusedError | ConnectionResetError)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except TimeoutError:
        return False


def _in_flight(router: LocalRouter) -> float:
    return metric_sum(scrape_metrics(router.metrics_url), m.ROUTER_IN_FLIGHT.name)


async def _terminate_under_load(
    router: LocalRouter, pods: dict[str, list[str]]
) -> tuple[list[Answer], bool]:
    """Start IN_FLIGHT requests, SIGTERM the router once all are in flight, then give it the
    tier's `pods`; the answers, and whether a new connection was refused while it drained."""
    assert router.process is not None
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = [asyncio.create_task(post(session, router.url, REQUEST)) for _ in range(IN_FLIGHT)]
        await asyncio.to_thread(
            wait_for,
            lambda: _in_flight(router) >= IN_FLIGHT,
            timeout_s=60,
            what=f"{IN_FLIGHT} requests in flight in the router",
        )
        router.process.send_signal(signal.SIGTERM)
        refused = False

        def listener_closed() -> bool:
            nonlocal refused
            refused = refused or _refuses_connections(router.url)
            return refused or all(t.done() for t in tasks)

        await asyncio.to_thread(
            wait_for, listener_closed, timeout_s=60, what="the router to close its listener"
        )
        router.write_backends(pods)
        answers = list(await asyncio.gather(*tasks))
    return answers, refused


def test_a_router_terminated_gracefully_fails_no_in_flight_request(
    stack: LocalStack, tmp_path: Path
) -> None:
    assert stack.router is not None
    table = json.loads(json.dumps(stack.router.table))
    pods = dict(stack.router.backends)
    router = LocalRouter(tmp_path, table, {tier: [] for tier in pods}).start()
    try:
        answers, refused = asyncio.run(_terminate_under_load(router, pods))
        statuses = [a.status for a in answers]
        print(f"in flight at SIGTERM: {IN_FLIGHT}; answers {statuses}; new connection refused")
        assert statuses == [200] * IN_FLIGHT, [a.body for a in answers if a.status != 200]
        assert refused, "the router kept accepting connections after SIGTERM"
        assert router.process is not None
        try:
            code = router.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the router did not exit after draining")
        assert code == 0, router.log.read_text()[-2000:]
        assert "every request finished" in router.log.read_text()
    finally:
        router.terminate()
