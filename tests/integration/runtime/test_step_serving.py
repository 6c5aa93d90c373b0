"""A step-batched tier pod (`batching.mode: step`): the decoupled Triton model behind the gate,
called over a gRPC stream the way the router calls it (`duotone_router.backends.Backend`).

Bytes equal request mode's for the same seed; a client that goes away stops its request at the
next step while its neighbour finishes; a request that cannot meet its deadline is refused
before any step. Waits poll with deadlines; nothing is timed.
"""

from __future__ import annotations

import asyncio
import math
import signal
from collections.abc import Callable
from typing import Any

import pytest

from duotone_contracts.limits import GenerationRequest
from duotone_contracts.triton import DEADLINE_REFUSAL
from duotone_router.backends import Backend, BackendError, Failure
from duotone_router.dispatch import RETRIED
from tests.integration.runtime.conftest import RuntimeServer, tiny_tier, wait_until

STEPS_TOTAL = "duotone_denoising_steps_total"
REJECTED = "duotone_requests_rejected_total"
REQUEST_STEPS_SUM = "duotone_step_request_steps_sum"
EXECUTING = "duotone_executing_requests"
LONG_STEPS = 60


@pytest.fixture(scope="module")
def step_server(start_server: Callable[..., RuntimeServer]) -> RuntimeServer:
    return start_server(
        "step",
        tiny_tier(mode="step", max_steps=LONG_STEPS, max_size=256, request_timeout_ms=60000),
    )


def generation(prompt: str, seed: int, **values: Any) -> GenerationRequest:
    given: dict[str, Any] = {
        "negative_prompt": "",
        "steps": 2,
        "guidance_scale": 0.0,
        "width": 64,
        "height": 64,
        "seed": seed,
        "num_images": 1,
    }
    return GenerationRequest(prompt, **(given | values))


async def generate(server: RuntimeServer, request: GenerationRequest, *, stream: bool) -> Any:
    backend = Backend(server.grpc_url)
    try:
        return await backend.generate(request, timeout_s=60, request_id="test", stream=stream)
    finally:
        await backend.close()


def test_step_mode_gives_request_modes_bytes(
    server: RuntimeServer, step_server: RuntimeServer
) -> None:
    request = generation("a cat on a mat", 7, guidance_scale=5.0, negative_prompt="blurry")
    plain = asyncio.run(generate(server, request, stream=False))
    stepped = asyncio.run(generate(step_server, request, stream=True))
    assert stepped.files == plain.files
    assert stepped.image_steps == 2
    assert stepped.prompt_tokens == plain.prompt_tokens > 0
    # The pod's own median (Triton's summary of a decoupled model ends at execute).
    median = step_server.metric("duotone_step_request_p50_microseconds")
    assert math.isfinite(median)
    assert median > 0


def test_invalid_input_is_refused_at_once(step_server: RuntimeServer) -> None:
    steps_before = step_server.metric(STEPS_TOTAL)
    with pytest.raises(BackendError) as refused:
        asyncio.run(generate(step_server, generation("x", 1, steps=LONG_STEPS + 1), stream=True))
    assert f"steps: {LONG_STEPS + 1} exceeds" in refused.value.detail
    assert step_server.metric(STEPS_TOTAL) == steps_before


def test_a_disconnect_stops_the_request_while_its_neighbour_finishes(
    step_server: RuntimeServer,
) -> None:
    neighbour = generation("the neighbour", 11, steps=6)
    alone = asyncio.run(generate(step_server, neighbour, stream=True)).files
    wait_until(lambda: step_server.metric(EXECUTING) == 0, 30, "an idle step loop")
    steps_before = step_server.metric(STEPS_TOTAL)
    summed_before = step_server.metric(REQUEST_STEPS_SUM)
    cancelled_before = step_server.metric(REJECTED, reason="cancelled")
    long = generation("a long one", 3, steps=LONG_STEPS, width=256, height=256)

    async def scenario() -> Any:
        backend = Backend(step_server.grpc_url)
        try:
            async with asyncio.timeout(120):
                return await steps(backend)
        finally:
            await backend.close()

    async def steps(backend: Backend) -> Any:
        """Cancel the long request after some steps, once the neighbour has joined it."""
        doomed = asyncio.ensure_future(
            backend.generate(long, timeout_s=120, request_id="doomed", stream=True)
        )
        while step_server.metric(STEPS_TOTAL) < steps_before + 3:
            await asyncio.sleep(0.02)  # polling the step counter
        kept = asyncio.ensure_future(
            backend.generate(neighbour, timeout_s=120, request_id="kept", stream=True)
        )
        while step_server.metric(STEPS_TOTAL) < steps_before + 5:
            await asyncio.sleep(0.02)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        return await kept

    kept = asyncio.run(scenario())
    assert kept.files == alone, "the neighbour's image changed when its batch lost a member"
    wait_until(
        lambda: step_server.metric(REJECTED, reason="cancelled") == cancelled_before + 1,
        30,
        "the cancelled request to be counted",
    )
    wait_until(lambda: step_server.metric(EXECUTING) == 0, 30, "an idle step loop")
    computed = step_server.metric(REQUEST_STEPS_SUM) - summed_before
    long_steps = computed - 6
    assert 3 <= long_steps < LONG_STEPS, f"the long request computed {long_steps} steps"
    # Every step computed belongs to a request that left the loop: nothing ran on after it.
    assert step_server.metric(STEPS_TOTAL) - steps_before == computed


def test_an_infeasible_deadline_is_refused_before_any_step(step_server: RuntimeServer) -> None:
    # The loop's step-time estimate comes from recent steps: measure some at this size.
    warm = generation("warm", 1, steps=3, width=256, height=256)
    asyncio.run(generate(step_server, warm, stream=True))
    wait_until(lambda: step_server.metric(EXECUTING) == 0, 30, "an idle step loop")
    steps_before = step_server.metric(STEPS_TOTAL)
    infeasible_before = step_server.metric(REJECTED, reason="infeasible")
    hopeless = generation("hopeless", 2, steps=LONG_STEPS, width=256, height=256, deadline_ms=1000)
    with pytest.raises(BackendError) as refused:
        asyncio.run(generate(step_server, hopeless, stream=True))
    assert DEADLINE_REFUSAL in refused.value.detail
    assert refused.value.failure is Failure.QUEUE_FULL  # the router overflows it per policy
    assert step_server.metric(REJECTED, reason="infeasible") == infeasible_before + 1
    assert step_server.metric(STEPS_TOTAL) == steps_before


def test_sigterm_finishes_the_step_loops_requests_and_refuses_new_ones(
    start_server: Callable[..., RuntimeServer],
) -> None:
    exit_timeout = 60
    server = start_server(
        "step-drain",
        tiny_tier(mode="step", max_steps=LONG_STEPS, max_size=256, request_timeout_ms=60000),
        exit_timeout_secs=exit_timeout,
    )
    long = generation("in flight", 5, steps=30, width=256, height=256)
    process: Any = server.process

    async def scenario() -> tuple[Any, BackendError]:
        backend = Backend(server.grpc_url)
        try:
            async with asyncio.timeout(exit_timeout):
                running = asyncio.ensure_future(
                    backend.generate(long, timeout_s=exit_timeout, request_id="a", stream=True)
                )
                while server.metric(STEPS_TOTAL) < 2:
                    await asyncio.sleep(0.02)  # polling the step counter
                process.send_signal(signal.SIGTERM)
                while server.is_ready():
                    await asyncio.sleep(0.02)
                with pytest.raises(BackendError) as late:
                    await backend.generate(
                        generation("too late", 1), timeout_s=10, request_id="b", stream=True
                    )
                return await running, late.value
        finally:
            await backend.close()

    answered, late = asyncio.run(scenario())
    assert len(answered.files) == 1
    assert answered.image_steps == 30
    # The router tries a refused request once more on another pod. A new stream opened while
    # the pod drains is refused by the gate ("shutting down": CONNECT), or, as observed while
    # tritonserver unloads the model, fails with "Internal error from Core" (OTHER).
    assert late.failure in RETRIED, late.detail
    process.wait(timeout=exit_timeout + 10)
    assert process.returncode == 0, server.log_tail()
