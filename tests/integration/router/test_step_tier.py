"""A step-batched flagship tier behind the real router: the official SDK gets the same image as
from the request-batched efficient tier (same weights, same seed); a client that hangs up stops
its request on the pod; a bad priority header is refused naming it."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import aiohttp
import openai
import pytest

from duotone_router.guards import PRIORITY_HEADER
from duotone_testbed.stack import LocalStack
from tests.integration.router.conftest import post, router_metric, start_stack
from tests.support import presets
from tests.support.cluster import wait_for


@pytest.fixture(scope="module")
def stepped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    builder = presets.tiny_pair("steps").batching(mode="step", maxBatchSize=4, maxQueueSize=16)
    started = start_stack(tmp_path_factory.mktemp("steps"), builder)
    try:
        yield started
    finally:
        started.stop()


def url(stack: LocalStack) -> str:
    assert stack.router is not None
    return stack.router.url


def flagship_metric(stack: LocalStack, name: str, **labels: str) -> float:
    return stack.servers["flagship"][0].metric(name, **labels)


def test_the_sdk_gets_the_same_image_from_either_batching_mode(stepped: LocalStack) -> None:
    assert stepped.tier_document("flagship")["spec"]["batching"]["mode"] == "step"
    client = openai.OpenAI(base_url=f"{url(stepped)}/v1", api_key="unused", max_retries=0)
    images = {}
    for tier in ("efficient", "flagship"):
        result = client.images.generate(
            prompt="a lighthouse",
            n=2,
            size="128x64",  # type: ignore[arg-type]
            response_format="b64_json",
            extra_body={"tier": tier, "seed": 11, "steps": 2},
        )
        assert result.data is not None
        images[tier] = [base64.b64decode(d.b64_json or "") for d in result.data]
    assert images["flagship"] == images["efficient"]
    assert images["flagship"][0][:8] == b"\x89PNG\r\n\x1a\n"
    assert images["flagship"][0] != images["flagship"][1]


def test_a_hang_up_stops_the_request_on_the_step_pod(stepped: LocalStack) -> None:
    cancelled = flagship_metric(stepped, "duotone_requests_rejected_total", reason="cancelled")
    steps = flagship_metric(stepped, "duotone_denoising_steps_total")

    async def hang_up() -> None:
        async with aiohttp.ClientSession() as session:
            call = asyncio.ensure_future(
                post(
                    session,
                    url(stepped),
                    {"prompt": "long", "tier": "flagship", "steps": 16, "size": "256x256"},
                )
            )
            async with asyncio.timeout(60):
                while flagship_metric(stepped, "duotone_denoising_steps_total") < steps + 2:
                    await asyncio.sleep(0.05)  # polling the pod's step counter
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

    asyncio.run(hang_up())
    wait_for(
        lambda: (
            flagship_metric(stepped, "duotone_requests_rejected_total", reason="cancelled")
            == cancelled + 1
        ),
        timeout_s=30,
        what="the step pod to drop the abandoned request",
    )
    wait_for(
        lambda: flagship_metric(stepped, "duotone_executing_requests") == 0,
        timeout_s=30,
        what="the step loop to be idle",
    )
    computed = flagship_metric(stepped, "duotone_denoising_steps_total") - steps
    assert 2 <= computed < 16


def test_a_bad_priority_header_is_refused_before_any_tier(stepped: LocalStack) -> None:
    before = router_metric(stepped, "duotone_router_tier_demand_total")

    async def send() -> tuple[int, dict[str, object]]:
        async with aiohttp.ClientSession() as session:
            answer = await post(
                session, url(stepped), {"prompt": "x"}, **{PRIORITY_HEADER: "urgent"}
            )
            return answer.status, answer.body

    status, body = asyncio.run(send())
    assert status == 422  # invalid_value, as for a body field out of range
    error = body["error"]
    assert isinstance(error, dict)
    assert error["param"] == PRIORITY_HEADER
    assert router_metric(stepped, "duotone_router_tier_demand_total") == before
