"""A step-batched flagship tier behind the real router: the official SDK gets the same image as
from the request-batched efficient tier (same weights, same seed); a client that hangs up stops
its request on the pod; a bad priority header is refused naming it. Streaming (`stream: true`)
through the official SDK: the previews asked for (an edit's too), then the same image as
unstreamed; a client that hangs up mid-stream stops the request at the next step."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest
from PIL import Image

from duotone_router.guards import PRIORITY_HEADER
from duotone_testbed.stack import LocalStack
from tests.integration.router.conftest import post, router_metric, start_stack
from tests.support import presets
from tests.support.cluster import wait_for


@pytest.fixture(scope="module")
def stepped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    builder = (
        presets.tiny_pair("steps")
        .batching(mode="step", maxBatchSize=4, maxQueueSize=16)
        .limits(maxSteps=30)  # the flagship's
    )
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


def steps_until_dropped(stack: LocalStack, cancelled: float, steps: float) -> float:
    """Once the flagship pod counted one more cancelled request (`cancelled` before) and its
    loop is idle: the steps computed since `steps`."""
    wait_for(
        lambda: (
            flagship_metric(stack, "duotone_requests_rejected_total", reason="cancelled")
            == cancelled + 1
        ),
        timeout_s=30,
        what="the step pod to drop the request whose client left",
    )
    wait_for(
        lambda: flagship_metric(stack, "duotone_executing_requests") == 0,
        timeout_s=30,
        what="the step loop to be idle",
    )
    return flagship_metric(stack, "duotone_denoising_steps_total") - steps


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
    computed = steps_until_dropped(stepped, cancelled, steps)
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


def sdk(stack: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url(stack)}/v1", api_key="unused", max_retries=0)


def unstreamed(stack: LocalStack, **fields: Any) -> bytes:
    result = sdk(stack).images.generate(prompt="a harbour at dawn", **fields)
    assert result.data is not None
    return base64.b64decode(result.data[0].b64_json or "")


def test_a_stream_sends_the_previews_then_the_unstreamed_image(stepped: LocalStack) -> None:
    """`stream=True, partial_images=2` on the step tier: exactly 2 partial events (indexes 0
    and 1, JPEG previews of the requested size, unlike the image) then 1 completed event whose
    image is the unstreamed one for the same seed, with its usage."""
    sent = flagship_metric(stepped, "duotone_partial_images_total")
    fields: dict[str, Any] = {
        "size": "64x64",
        "output_format": "jpeg",
        "extra_body": {"tier": "flagship", "seed": 21, "steps": 6},
    }
    events = list(
        sdk(stepped).images.generate(
            prompt="a harbour at dawn", stream=True, partial_images=2, **fields
        )
    )
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    partials = [e for e in events if e.type == "image_generation.partial_image"]
    assert [e.partial_image_index for e in partials] == [0, 1]
    previews = [base64.b64decode(e.b64_json) for e in partials]
    for preview in previews:
        assert preview[:3] == b"\xff\xd8\xff"
        assert Image.open(io.BytesIO(preview)).size == (64, 64)
    completed = events[-1]
    assert completed.type == "image_generation.completed"
    final = base64.b64decode(completed.b64_json)
    assert final == unstreamed(stepped, **fields)
    assert final not in previews
    assert (completed.output_format, completed.size, completed.quality) == ("jpeg", "64x64", "high")
    assert completed.usage.output_tokens == 6
    assert flagship_metric(stepped, "duotone_partial_images_total") == sent + 2


def test_a_request_batched_tier_streams_the_image_alone(stepped: LocalStack) -> None:
    """A request-batched tier computes a request in one call: it sends no preview (OpenAI allows
    fewer partial images than asked for), and the completed event is the unstreamed image."""
    fields: dict[str, Any] = {"size": "64x64", "extra_body": {"tier": "efficient", "seed": 3}}
    events = list(
        sdk(stepped).images.generate(
            prompt="a harbour at dawn", stream=True, partial_images=3, **fields
        )
    )
    assert [e.type for e in events] == ["image_generation.completed"]
    assert base64.b64decode(events[0].b64_json) == unstreamed(stepped, **fields)


def test_a_streamed_edit_sends_its_preview_then_the_unstreamed_image(stepped: LocalStack) -> None:
    pixels = np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    source = ("photo.png", buffer.getvalue(), "image/png")

    def edit(**extra: Any) -> Any:
        return sdk(stepped).images.edit(
            image=source,
            prompt="make it a watercolour",
            extra_body={"tier": "flagship", "seed": 6, "steps": 4},
            **extra,
        )

    events = list(edit(stream=True, partial_images=1))
    # Strength 0.8 runs 3 of the 4 steps; the one preview comes after step 2, from the call.
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert events[0].partial_image_index == 0
    plain = edit()
    assert base64.b64decode(events[-1].b64_json) == base64.b64decode(plain.data[0].b64_json)


def test_a_refused_stream_is_answered_as_json_before_any_event(stepped: LocalStack) -> None:
    for extra, param in (({"n": 2}, "n"), ({"extra_body": {"steps": 100000}}, "steps")):
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            sdk(stepped).images.generate(prompt="x", stream=True, partial_images=1, **extra)
        body: Any = refused.value.body
        assert body["param"] == param, body


def test_a_hang_up_mid_stream_stops_the_request_at_the_next_step(stepped: LocalStack) -> None:
    """The client reads the first preview of a 30-step request, then closes the connection:
    the step pod drops the request (counted as cancelled) long before its 30 steps, and its
    step counter stops growing once the loop is idle."""
    cancelled = flagship_metric(stepped, "duotone_requests_rejected_total", reason="cancelled")
    steps = flagship_metric(stepped, "duotone_denoising_steps_total")

    async def read_one_preview_and_leave() -> dict[str, Any]:
        body = {
            "prompt": "a long one",
            "tier": "flagship",
            "steps": 30,
            "size": "128x128",
            "stream": True,
            "partial_images": 3,
        }
        generations = f"{url(stepped)}/v1/images/generations"
        async with (
            aiohttp.ClientSession() as session,
            session.post(generations, json=body) as response,
        ):
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for line in response.content:
                if line.startswith(b"data: "):
                    return dict(json.loads(line[len(b"data: ") :]))
        raise AssertionError("the stream ended without an event")

    first = asyncio.run(asyncio.wait_for(read_one_preview_and_leave(), timeout=120))
    assert first["type"] == "image_generation.partial_image"
    assert first["partial_image_index"] == 0
    computed = steps_until_dropped(stepped, cancelled, steps)
    # The first preview comes after step 8 (of 30); the request stopped soon after.
    assert 8 <= computed < 30
    assert flagship_metric(stepped, "duotone_denoising_steps_total") - steps == computed
