"""The router in front of real tiers: split, named tiers, overflow, hot reload, guards."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aiohttp
import openai
import pytest

from duotone_contracts.latency import LatencyWindow
from duotone_testbed.stack import LocalStack
from tests.integration.router.conftest import (
    post,
    post_many,
    reconfigure,
    router_metric,
    triton_requests,
)
from tests.support.cluster import wait_for


def url(stack: LocalStack) -> str:
    assert stack.router is not None
    return stack.router.url


def demand(stack: LocalStack, tier: str) -> float:
    return router_metric(stack, "duotone_router_tier_demand_total", tier=tier)


def test_a_thousand_requests_split_80_20_and_all_succeed(stack: LocalStack) -> None:
    before = {tier: demand(stack, tier) for tier in ("efficient", "flagship")}
    answers = asyncio.run(post_many(url(stack), [{"prompt": f"p{i}"} for i in range(1000)], 16))
    assert [a.status for a in answers if a.status != 200] == []
    wanted = {tier: demand(stack, tier) - before[tier] for tier in before}
    # Binomial(1000, 0.8): sd 12.6, so 800 +- 55 is a 4.3 sd band.
    assert 745 <= wanted["efficient"] <= 855, wanted
    assert wanted["efficient"] + wanted["flagship"] == 1000
    served = {a.tier for a in answers}
    assert served == {"efficient", "flagship"}
    # What the split sent to the flagship was served there unless it overflowed (marked so).
    for answer in answers:
        degraded = answer.headers["X-Duotone-Degraded"] == "true"
        assert degraded == (answer.headers["X-Duotone-Route"] == "overflow")


@pytest.fixture(scope="module")
def burst_forgotten(stack: LocalStack) -> None:
    """The router diverts from a tier whose p50 over the last `LatencyWindow.window_s` is above
    its SLO, so the queue the 1,000-request burst built at the flagship made named requests
    overflow for up to that long after it. Nothing is in flight between tests: once a window's
    length has passed, no sample of the burst is left."""
    forgotten_at = time.monotonic() + LatencyWindow().window_s
    wait_for(
        lambda: time.monotonic() >= forgotten_at,
        timeout_s=LatencyWindow().window_s + 5,
        what="the burst to leave the router's latency window",
    )


@pytest.mark.usefixtures("burst_forgotten")
@pytest.mark.parametrize(
    ("extra", "tier"),
    [
        pytest.param({"tier": "flagship"}, "flagship", id="tier field"),
        pytest.param({"model": "flagship"}, "flagship", id="model names a tier"),
        pytest.param({"quality": "hd"}, "flagship", id="quality hd"),
        pytest.param({"quality": "standard"}, "efficient", id="quality standard"),
        pytest.param({"tier": "efficient"}, "efficient", id="efficient by name"),
    ],
)
def test_named_tiers_are_honoured(stack: LocalStack, extra: dict[str, str], tier: str) -> None:
    answers = asyncio.run(post_many(url(stack), [{"prompt": "named", **extra}] * 3, 1))
    assert [(a.status, a.tier, a.headers["X-Duotone-Route"]) for a in answers] == [
        (200, tier, "requested")
    ] * 3


def test_openai_sdk_gets_pngs_of_the_requested_size(stack: LocalStack) -> None:
    client = openai.OpenAI(base_url=f"{url(stack)}/v1", api_key="unused", max_retries=0)
    result = client.images.generate(
        prompt="a lighthouse",
        n=2,
        size="128x64",  # type: ignore[arg-type]
        response_format="b64_json",
        extra_body={"tier": "efficient", "seed": 11},
    )
    assert result.data is not None
    again = client.images.generate(
        prompt="a lighthouse",
        n=2,
        size="128x64",
        response_format="b64_json",  # type: ignore[arg-type]
        extra_body={"tier": "efficient", "seed": 11},
    )
    assert again.data is not None
    first = [d.b64_json for d in result.data]
    assert first == [d.b64_json for d in again.data]  # same seed, same images
    assert first[0] != first[1]  # image j uses seed + j
    models = client.models.list()
    assert [m.id for m in models.data] == ["efficient", "flagship"]


def test_images_are_pngs_of_the_size_asked(stack: LocalStack) -> None:
    answers = asyncio.run(post_many(url(stack), [{"prompt": "x", "size": "96x64", "n": 2}], 1))
    images = answers[0].images()
    assert [(i.format, i.size) for i in images] == [("PNG", (96, 64))] * 2


def test_disabled_client_selection_is_enforced(stack: LocalStack) -> None:
    reconfigure(stack, traffic={"clientTierSelection": False})
    try:
        answers = asyncio.run(
            post_many(
                url(stack),
                [{"prompt": "x", "tier": "flagship"}, {"prompt": "y", "quality": "hd"}],
                1,
            )
        )
        refused, hinted = answers
        assert refused.status == 403
        assert refused.body["error"]["param"] == "tier"
        assert "selection is disabled" in refused.body["error"]["message"]
        assert hinted.status == 200  # quality is a hint: it follows the split instead
        assert hinted.headers["X-Duotone-Route"] == "split"
    finally:
        reconfigure(stack, traffic={"clientTierSelection": True})


def slow_flagship(i: int) -> dict[str, object]:
    """A flagship request that takes a while on CPU and also fits the efficient tier's limits."""
    return {"prompt": f"slow {i}", "tier": "flagship", "steps": 8, "seed": i}


def test_saturated_flagship_overflows_to_efficient_marked_degraded(stack: LocalStack) -> None:
    # The flagship runs one request and queues one: the rest of eight are refused at once.
    answers = asyncio.run(post_many(url(stack), [slow_flagship(i) for i in range(8)], 8))
    assert [a.status for a in answers] == [200] * 8
    degraded = [a for a in answers if a.headers["X-Duotone-Degraded"] == "true"]
    assert degraded, "expected some requests to overflow"
    assert all(
        a.tier == "efficient" and a.headers["X-Duotone-Route"] == "overflow" for a in degraded
    )
    assert any(a.tier == "flagship" for a in answers)
    assert router_metric(
        stack, "duotone_router_overflows_total", from_tier="flagship", to_tier="efficient"
    ) >= len(degraded)


def test_saturated_flagship_with_overflow_reject_gets_503_retry_after(stack: LocalStack) -> None:
    reconfigure(stack, traffic={"overflow": "reject"})
    try:
        answers = asyncio.run(post_many(url(stack), [slow_flagship(i) for i in range(8)], 8))
    finally:
        reconfigure(stack, traffic={"overflow": "efficient"})
    rejected = [a for a in answers if a.status == 503]
    assert rejected, [a.status for a in answers]
    assert {a.status for a in answers} <= {200, 503}
    for answer in rejected:
        assert int(answer.headers["Retry-After"]) >= 1
        assert answer.body["error"]["code"] == "tier_saturated"
    assert all(a.tier == "flagship" for a in answers if a.status == 200)


def test_weights_change_during_load_without_a_failed_request(stack: LocalStack) -> None:
    async def scenario() -> tuple[list, list]:  # type: ignore[type-arg]
        before = asyncio.create_task(
            post_many(url(stack), [{"prompt": f"b{i}"} for i in range(60)], 4)
        )
        await asyncio.sleep(0)  # let the load start before the table changes
        await asyncio.to_thread(reconfigure, stack, traffic={"efficientPercent": 0})
        after = await post_many(url(stack), [{"prompt": f"a{i}"} for i in range(20)], 4)
        return await before, after

    try:
        during, after = asyncio.run(scenario())
    finally:
        reconfigure(stack, traffic={"efficientPercent": 80})
    assert [a.status for a in during + after if a.status != 200] == []
    # After the reload every unnamed request wants the flagship (overflow may still serve it).
    assert all(a.headers["X-Duotone-Route"] in ("split", "overflow") for a in after)
    assert all(a.tier == "flagship" or a.headers["X-Duotone-Degraded"] == "true" for a in after)


def test_keys_rate_limits_and_bad_input_never_reach_a_backend(
    stack: LocalStack, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "search-team").write_text("k-search-0123456789")
    reconfigure(stack, apiKeysPath=str(keys), rateLimit={"requestsPerMinutePerKey": 1, "burst": 5})
    try:
        before = triton_requests(stack)

        async def guarded() -> list:  # type: ignore[type-arg]
            async with aiohttp.ClientSession() as session:
                base = url(stack)
                good = {"Authorization": "Bearer k-search-0123456789"}
                return [
                    await post(session, base, {"prompt": "x"}),
                    await post(session, base, {"prompt": "x"}, Authorization="Bearer wrong"),
                    await post(session, base, {"prompt": "x", "steps": 99}, **good),
                    await post(session, base, {"prompt": "x", "size": "64x63"}, **good),
                    await post(session, base, b'{"prompt": "' + b"x" * 70000 + b'"}', **good),
                    await post(session, base, {"prompt": "x", "n": 1, "bogus": 1}, **good),
                ]

        missing, wrong, steps, size, huge, unknown = asyncio.run(guarded())
        assert (missing.status, missing.body["error"]["code"]) == (401, "missing_api_key")
        assert (wrong.status, wrong.body["error"]["code"]) == (401, "invalid_api_key")
        assert (steps.status, steps.body["error"]["param"]) == (422, "steps")
        assert "limits.maxSteps" in steps.body["error"]["message"]
        assert (size.status, size.body["error"]["param"]) == (422, "height")
        assert (huge.status, huge.body["error"]["param"]) == (413, "body")
        assert (unknown.status, unknown.body["error"]["param"]) == (422, "bogus")
        # Rate limit: burst 5 at one a minute; the three 422s above took three (413 is refused
        # before the bucket), so of three more two pass and one waits about a minute.
        over = asyncio.run(
            post_many(
                url(stack), [{"prompt": "x"}] * 3, 1, Authorization="Bearer k-search-0123456789"
            )
        )
        assert [a.status for a in over] == [200, 200, 429]
        limited = next(a for a in over if a.status == 429)
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.body["error"]["type"] == "rate_limit_error"
        served = sum(1 for a in over if a.status == 200)
        assert triton_requests(stack) == before + served  # none of the refused ones got there
        assert router_metric(stack, "duotone_router_requests_total", status="401") >= 2
        assert (
            router_metric(stack, "duotone_router_requests_total", status="429", key="search-team")
            >= 1
        )
    finally:
        reconfigure(stack, apiKeysPath=None, rateLimit={"requestsPerMinutePerKey": 60, "burst": 2})


def test_client_disconnect_cancels_the_upstream_call(stack: LocalStack) -> None:
    before = router_metric(stack, "duotone_router_cancelled_requests_total", tier="none")

    async def hang_up() -> None:
        timeout = aiohttp.ClientTimeout(total=0.5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with pytest.raises(TimeoutError):
                await post(
                    session,
                    url(stack),
                    {"prompt": "long", "tier": "flagship", "steps": 16, "size": "128x128"},
                )

    asyncio.run(hang_up())
    wait_for(
        lambda: (
            router_metric(stack, "duotone_router_cancelled_requests_total", tier="none") > before
        ),
        timeout_s=10,
        what="the router to cancel the abandoned request",
    )
    wait_for(
        lambda: (
            router_metric(stack, "duotone_router_backend_outstanding_requests", tier="flagship")
            == 0
        ),
        timeout_s=10,
        what="the upstream call to end",
    )


def test_models_openapi_and_unknown_paths(stack: LocalStack) -> None:
    async def fetch() -> list[tuple[int, dict]]:  # type: ignore[type-arg]
        async with aiohttp.ClientSession() as session:
            out = []
            for path in ("/v1/models", "/openapi.json", "/v1/nothing", "/healthz", "/readyz"):
                async with session.get(url(stack) + path) as response:
                    text = await response.text()
                    out.append((response.status, json.loads(text) if text.startswith("{") else {}))
            return out

    models, openapi, missing, healthz, readyz = asyncio.run(fetch())
    assert models[0] == 200
    assert {m["id"]: m["limits"]["maxSteps"] for m in models[1]["data"]} == {
        "efficient": 8,
        "flagship": 16,
    }
    assert openapi[0] == 200
    assert "/v1/images/generations" in openapi[1]["paths"]
    assert missing[0] == 404
    assert missing[1]["error"]["type"] == "not_found_error"
    assert healthz[0] == 200
    assert readyz[0] == 200


def test_router_metrics_cover_requests_latency_and_pending(stack: LocalStack) -> None:
    assert stack.router is not None
    metrics = router_metric(
        stack, "duotone_router_request_duration_seconds_count", tier="efficient"
    )
    assert metrics > 0
    assert router_metric(stack, "duotone_router_backends", tier="efficient") == 1
    assert router_metric(stack, "duotone_router_in_flight_requests") == 0
    assert router_metric(stack, "duotone_router_pending_requests", tier="flagship") == 0
    assert router_metric(stack, "duotone_router_routes_total", route="split") > 0


def test_an_invalid_routing_table_is_refused_and_the_previous_one_kept(stack: LocalStack) -> None:
    assert stack.router is not None
    before = router_metric(stack, "duotone_router_config_reloads_total", result="invalid")
    good = stack.router.table
    stack.router.config_path.write_text('{"name": "ab", "tiers": {"premium": {}}}')
    try:
        wait_for(
            lambda: (
                router_metric(stack, "duotone_router_config_reloads_total", result="invalid")
                > before
            ),
            timeout_s=15,
            what="the router to refuse the invalid table",
        )
        (answer,) = asyncio.run(post_many(url(stack), [{"prompt": "x", "tier": "flagship"}], 1))
        assert (answer.status, answer.tier) == (200, "flagship")
    finally:
        reconfigure(stack, **good)


def test_a_tier_past_its_deadline_answers_504(stack: LocalStack) -> None:
    assert stack.router is not None
    tiers = json.loads(json.dumps(stack.router.table["tiers"]))
    tiers["flagship"]["requestTimeoutMs"] = 100
    reconfigure(stack, tiers=tiers)
    try:
        slow = {"prompt": "late", "tier": "flagship", "steps": 16, "size": "128x128"}
        (answer,) = asyncio.run(post_many(url(stack), [slow], 1))
    finally:
        tiers["flagship"]["requestTimeoutMs"] = 30000
        reconfigure(stack, tiers=tiers)
    assert answer.status == 504
    assert answer.body["error"]["code"] == "deadline_exceeded"
