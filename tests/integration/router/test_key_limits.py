"""Per-key limits on a running router: reloads take effect, cost counts, tiers per key."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from duotone_testbed.stack import LocalStack
from tests.integration.router.conftest import (
    Answer,
    post_many,
    reconfigure,
    router_metric,
    triton_requests,
)

TOKEN = "k-batch-0123456789abcdef"  # noqa: S105 - a test key
KEY = {"Authorization": f"Bearer {TOKEN}"}
DEFAULT_LIMIT = {"requestsPerMinutePerKey": 60, "burst": 2, "costPerMinutePerKey": None}
"""The shared stack's rate limit (presets.tiny_pair), restored after each test (`reconfigure`
merges into the table's rateLimit, so every field is named)."""
GENEROUS = {"requestsPerMinutePerKey": 6000, "burst": None, "costPerMinutePerKey": None}


@pytest.fixture
def keyed(stack: LocalStack, tmp_path: Path) -> Iterator[LocalStack]:
    """The shared stack with one API key, "batch"; the open endpoint again afterwards."""
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "batch").write_text(TOKEN)
    reconfigure(stack, apiKeysPath=str(keys), rateLimit=GENEROUS)
    try:
        yield stack
    finally:
        reconfigure(stack, apiKeysPath=None, rateLimit=DEFAULT_LIMIT, keyTiers={})


def _send(stack: LocalStack, bodies: list[dict[str, Any]]) -> list[Answer]:
    assert stack.router is not None
    return asyncio.run(post_many(stack.router.url, bodies, 1, **KEY))


def test_a_lowered_rate_applies_from_the_next_request(keyed: LocalStack) -> None:
    assert [a.status for a in _send(keyed, [{"prompt": "x"}] * 3)] == [200] * 3
    # The bucket still holds thousands of tokens; the reload shrinks it to the new burst of 1.
    reconfigure(keyed, rateLimit={"requestsPerMinutePerKey": 1, "burst": 1})
    first, second = _send(keyed, [{"prompt": "x"}] * 2)
    assert (first.status, second.status) == (200, 429)
    assert "1 requests per minute" in second.body["error"]["message"]
    assert int(second.headers["Retry-After"]) >= 1


def test_a_cost_limit_refuses_a_large_flagship_request_a_count_admits(
    keyed: LocalStack,
) -> None:
    # 2 images x 16 steps x 256x256 = 8 image-steps at 512x512; the key may spend 1 a minute.
    reconfigure(keyed, rateLimit={"requestsPerMinutePerKey": 6000, "costPerMinutePerKey": 1})
    before = triton_requests(keyed)
    large = {"prompt": "x", "tier": "flagship", "n": 2, "steps": 16, "size": "256x256"}
    small = {"prompt": "x", "tier": "efficient"}  # 1 x 1 step x 64x64: 1/64 of a unit
    refused, served = _send(keyed, [large, small])
    assert (refused.status, refused.body["error"]["code"]) == (422, "cost_too_large")
    assert refused.body["error"]["param"] == "n"
    assert served.status == 200
    assert triton_requests(keyed) == before + 1  # the refused one never reached a tier
    # Spend the budget: 2 one-step images at 256x256 cost 0.5 (and little CPU). The key holds
    # under 1 and earns 1 a minute, so of four such requests one must wait.
    spend = {"prompt": "x", "tier": "efficient", "n": 2, "size": "256x256"}
    answers = _send(keyed, [spend] * 4)
    statuses = [a.status for a in answers]
    assert statuses[0] == 200, statuses
    assert set(statuses) == {200, 429}
    limited = next(a for a in answers if a.status == 429)
    assert "image-steps" in limited.body["error"]["message"]
    assert router_metric(keyed, "duotone_router_requests_total", status="429", key="batch") >= 1


def test_a_key_restricted_to_a_tier_never_reaches_the_other(keyed: LocalStack) -> None:
    reconfigure(keyed, keyTiers={"batch": ["efficient"]})
    named = _send(
        keyed, [{"prompt": "x", "tier": "flagship"}, {"prompt": "x", "model": "flagship"}]
    )
    for answer in named:
        assert (answer.status, answer.body["error"]["code"]) == (403, "tier_not_allowed")
        assert answer.body["error"]["param"] in ("tier", "model")
    # Unnamed requests are split 80/20 for everyone else; this key's all go to its tier.
    unnamed = _send(keyed, [{"prompt": f"x{i}"} for i in range(12)])
    assert [a.status for a in unnamed] == [200] * 12
    assert {a.tier for a in unnamed} == {"efficient"}
