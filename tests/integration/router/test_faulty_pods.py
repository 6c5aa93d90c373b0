"""One of a tier's two pods goes bad under load: a pod that fails every request at once, and a
pod frozen with SIGSTOP. The router ejects it (consecutive errors; missed health probes) and
retries what it lost on the other pod: at least 99% of 400 requests at concurrency 8 succeed,
and none fails after the first 5 s. And with no pod at all, the requests waiting for one are
capped per tier."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from duotone_contracts.api.validation import parse_imd
from duotone_operator.render.router import routing_table
from duotone_runtime.launcher import free_port
from duotone_testbed.clients import metric_sum, scrape_metrics
from duotone_testbed.local import stop_process
from duotone_testbed.stack import LocalRouter, LocalStack
from tests.integration.router.conftest import (
    Answer,
    post_many,
    router_metric,
    start_efficient_pair,
)
from tests.support.builders import imd
from tests.support.cluster import wait_for

REQUESTS = 400
CONCURRENCY = 8
QUIET_AFTER_S = 5.0
"""No request may fail after this long into the load."""


@pytest.fixture
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Two efficient pods (1 step, 64x64) behind a router; a fresh pair for each test."""
    started = start_efficient_pair(tmp_path_factory.mktemp("faulty"), "faulty")
    try:
        yield started
    finally:
        started.stop()


@dataclass(frozen=True)
class Summary:
    succeeded: int
    failed: int
    last_failure_s: float | None
    """When the last failed request was answered, in seconds from the start of the load."""
    wall_s: float

    @classmethod
    def of(cls, answers: list[Answer], started: float) -> Summary:
        failures = [a.finished - started for a in answers if a.status != 200]
        wall = max(a.finished for a in answers) - started
        return cls(len(answers) - len(failures), len(failures), max(failures, default=None), wall)

    def __str__(self) -> str:
        last = "none" if self.last_failure_s is None else f"{self.last_failure_s:.1f}s"
        return (
            f"{self.succeeded} succeeded, {self.failed} failed, last failure at {last}, "
            f"{REQUESTS} requests in {self.wall_s:.1f}s"
        )


def bodies(tag: str) -> list[dict[str, object]]:
    return [{"prompt": f"{tag} {i}", "size": "64x64"} for i in range(REQUESTS)]


def assert_isolated(summary: Summary, answers: list[Answer]) -> None:
    print(f"\n{summary}")
    failed = [(a.status, a.body) for a in answers if a.status != 200][:5]
    assert summary.succeeded >= 0.99 * REQUESTS, failed
    assert summary.last_failure_s is None or summary.last_failure_s <= QUIET_AFTER_S, failed


def stub_is_ready(address: str) -> bool:
    try:
        return bool(grpcclient.InferenceServerClient(address).is_server_ready(client_timeout=2))
    except InferenceServerException:
        return False


@pytest.fixture
def failing_stub(tmp_path: Path) -> Iterator[str]:
    """A Triton endpoint that is ready but fails every inference at once; its gRPC address."""
    port = free_port()
    log = tmp_path / "stub.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "duotone_testbed.stub_triton", f"--port={port}"],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    address = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: stub_is_ready(address), timeout_s=30, what="the stub Triton")
        yield address
    finally:
        stop_process(process, timeout_s=10)
        print(log.read_text(errors="replace"))


def test_a_pod_failing_every_request_is_ejected_and_its_requests_retried(
    pair: LocalStack, failing_stub: str
) -> None:
    assert pair.router is not None
    survivor = pair.servers["efficient"][1]
    pair.router.write_backends({"efficient": [failing_stub, survivor.grpc_url]})
    wait_for(
        lambda: failing_stub in pair.router.log.read_text(errors="replace"),  # type: ignore[union-attr]
        timeout_s=15,
        what="the router to route to the stub",
    )
    started = time.monotonic()
    answers = asyncio.run(post_many(pair.router.url, bodies("stub"), CONCURRENCY))
    summary = Summary.of(answers, started)
    errors = router_metric(pair, "duotone_router_backend_errors_total", failure="other")
    print(f"stub errors seen by the router: {errors:.0f}")
    assert_isolated(summary, answers)
    # The stub did get traffic, failed it, was ejected, and what it failed went elsewhere.
    assert errors >= 5
    assert router_metric(pair, "duotone_router_backend_ejections_total", cause="errors") >= 1
    assert router_metric(pair, "duotone_router_backend_retries_total", cause="error") >= 1


async def load_and_freeze(pair: LocalStack, pid: int) -> tuple[list[Answer], float, float]:
    """The load; SIGSTOP to process group `pid` once its pod has served 5 requests. Returns the
    answers, when the load started and when the pod was frozen."""
    assert pair.router is not None
    victim = pair.servers["efficient"][0]
    started = time.monotonic()
    load = asyncio.create_task(post_many(pair.router.url, bodies("frozen"), CONCURRENCY))
    deadline = started + 60
    while await asyncio.to_thread(victim.metric, "nv_inference_request_success") < 5:
        assert not load.done(), "the load ended before the victim served 5 requests"
        assert time.monotonic() < deadline, "the victim served nothing within 60 s"
        await asyncio.sleep(0.05)
    os.killpg(pid, signal.SIGSTOP)
    frozen = time.monotonic()
    return await load, started, frozen


def test_a_frozen_pod_is_ejected_and_its_requests_retried(pair: LocalStack) -> None:
    victim = pair.servers["efficient"][0]
    assert victim.process is not None
    # The gate and tritonserver (and its backend stubs) share the pod's process group.
    pid = victim.process.pid
    try:
        answers, started, frozen = asyncio.run(load_and_freeze(pair, pid))
    finally:
        os.killpg(pid, signal.SIGCONT)
    summary = Summary.of(answers, started)
    print(f"frozen at {frozen - started:.1f}s")
    retried = router_metric(pair, "duotone_router_backend_retries_total", cause="unresponsive")
    print(f"requests given up on the frozen pod and retried: {retried:.0f}")
    assert_isolated(summary, answers)
    assert router_metric(pair, "duotone_router_backend_ejections_total", cause="unresponsive") >= 1
    # Requests sent after the freeze were served: the survivor took the load.
    assert sum(a.status == 200 for a in answers if a.started > frozen + QUIET_AFTER_S) > 0


async def pending_burst(router: LocalRouter, cap: int, extra: int) -> list[Answer]:
    """`cap` requests that wait for a pod (the tier has none), then `extra` more."""
    body = {"prompt": "waiting", "size": "64x64"}
    waiting = asyncio.create_task(post_many(router.url, [body] * cap, cap))
    await asyncio.to_thread(
        wait_for,
        lambda: router_pending(router) == cap,
        timeout_s=15,
        what=f"{cap} requests pending in the router",
    )
    refused = await post_many(router.url, [body] * extra, extra)
    return [*refused, *await waiting]


def router_pending(router: LocalRouter) -> float:
    samples = scrape_metrics(router.metrics_url)
    return metric_sum(samples, "duotone_router_pending_requests", tier="efficient")


def test_requests_waiting_for_a_tier_with_no_pod_are_capped(tmp_path: Path) -> None:
    """Beyond `router.maxPendingPerTier` waiting requests, the next get 503 + Retry-After at
    once; those already waiting keep their place (and time out at the tier's deadline)."""
    manifest = (
        imd("capped")
        .tier("efficient")
        .defaults(steps=1, width=64, height=64)
        .batching(requestTimeoutMs=10000)
        .router(maxPendingPerTier=2)
        .build()
    )
    manifest["metadata"]["namespace"] = "local"
    table = routing_table(parse_imd(manifest)).model_dump(mode="json")
    router = LocalRouter(tmp_path / "router", table, {"efficient": []}).start()
    try:
        answers = asyncio.run(pending_burst(router, cap=2, extra=3))
        refused = answers[:3]
        print(f"\nstatuses: {[a.status for a in answers]}")
        assert [a.status for a in refused] == [503] * 3, [a.body for a in refused]
        assert all("Retry-After" in a.headers for a in refused)
        assert all("efficient" in a.body["error"]["message"] for a in refused)
        assert [a.status for a in answers[3:]] == [504, 504]
        refusals = metric_sum(
            scrape_metrics(router.metrics_url), "duotone_router_pending_refusals_total"
        )
        assert refusals == 3
    finally:
        router.terminate()
