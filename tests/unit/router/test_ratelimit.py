"""Per-key limits: buckets that follow reloads, and cost-weighted limits (pure)."""

from __future__ import annotations

import pytest

from duotone_contracts.api.v1alpha1 import RateLimitSpec
from duotone_contracts.limits import GenerationRequest
from duotone_router.guards import RateLimiter
from duotone_router.policy.ratelimit import TokenBucket, take
from duotone_router.policy.reasons import Reason, Refused


def _request(*, n: int, steps: int, side: int) -> GenerationRequest:
    return GenerationRequest(
        prompt="p",
        negative_prompt="",
        steps=steps,
        guidance_scale=1.0,
        width=side,
        height=side,
        seed=1,
        num_images=n,
    )


def test_cost_counts_images_steps_and_pixels() -> None:
    assert _request(n=1, steps=4, side=512).cost() == 4
    assert _request(n=4, steps=50, side=1024).cost() == 800
    assert _request(n=1, steps=1, side=64).cost() == pytest.approx(1 / 64)


def test_a_lowered_limit_shrinks_a_full_bucket_at_once() -> None:
    bucket = TokenBucket.full(per_minute=600, burst=None, now=0.0)
    lowered = bucket.retuned(per_minute=6, burst=None, now=1.0)
    assert (lowered.capacity, lowered.tokens, lowered.rate_per_s) == (6, 6, 0.1)


def test_a_raised_limit_keeps_the_tokens_and_refills_faster() -> None:
    bucket = TokenBucket.full(per_minute=60, burst=2, now=0.0)
    _, bucket = take(bucket, 0.0, 2)
    raised = bucket.retuned(per_minute=600, burst=100, now=0.0)
    assert (raised.capacity, raised.tokens) == (100, 0)
    assert raised.refilled(1.0).tokens == pytest.approx(10)


def test_more_than_the_capacity_never_fits() -> None:
    bucket = TokenBucket.full(per_minute=100, burst=None, now=0.0)
    admission, after = take(bucket, 0.0, 101)
    assert admission.never
    assert not admission.allowed
    assert after.tokens == 100


def test_the_limiter_follows_a_reload_within_one_request() -> None:
    limiter = RateLimiter()
    generous, strict = (
        RateLimitSpec(requests_per_minute_per_key=600),
        RateLimitSpec(requests_per_minute_per_key=2),
    )
    for i in range(10):
        limiter.admit("team", generous, float(i) / 100)
    limiter.admit("team", strict, 0.2)
    limiter.admit("team", strict, 0.2)
    with pytest.raises(Refused) as refused:
        limiter.admit("team", strict, 0.2)
    assert refused.value.reason is Reason.RATE_LIMITED
    assert refused.value.retry_after_s == 30


def test_a_cost_limit_refuses_a_large_flagship_request_a_count_admits() -> None:
    limit = RateLimitSpec(requests_per_minute_per_key=600, cost_per_minute_per_key=400)
    limiter = RateLimiter()
    limiter.admit("team", limit, 0.0)  # the request count alone lets it through
    with pytest.raises(Refused) as refused:
        limiter.charge("team", limit, _request(n=4, steps=50, side=1024).cost(), 0.0)
    assert refused.value.reason is Reason.COST_TOO_LARGE
    assert refused.value.param == "n"
    # Work within the budget passes until it is spent, then waits for the refill.
    limiter.charge("team", limit, _request(n=2, steps=50, side=1024).cost(), 0.0)
    with pytest.raises(Refused) as later:
        limiter.charge("team", limit, _request(n=1, steps=4, side=512).cost(), 0.0)
    assert later.value.reason is Reason.RATE_LIMITED
    assert later.value.retry_after_s == 1  # 4 image-steps at 400 per minute


def test_without_a_cost_limit_nothing_is_charged() -> None:
    limiter = RateLimiter()
    limiter.charge("team", RateLimitSpec(), 10_000.0, 0.0)
    assert limiter.cost_buckets == {}


def test_buckets_of_removed_keys_are_dropped() -> None:
    limiter = RateLimiter()
    limit = RateLimitSpec(cost_per_minute_per_key=10)
    for key in ("a", "b"):
        limiter.admit(key, limit, 0.0)
        limiter.charge(key, limit, 1.0, 0.0)
    limiter.forget_except({"b"})
    assert set(limiter.buckets) == set(limiter.cost_buckets) == {"b"}


def test_a_reload_switches_every_bucket_to_the_new_rate_at_once() -> None:
    limiter = RateLimiter()
    strict, generous = (
        RateLimitSpec(requests_per_minute_per_key=1, burst=1),
        RateLimitSpec(requests_per_minute_per_key=6000),
    )
    limiter.admit("team", strict, 0.0)  # empty now, refilling at one a minute
    limiter.follow(generous, 1.0)
    limiter.admit("team", generous, 1.5)  # 0.5 s at 100 a second: 50 tokens
    assert limiter.buckets["team"].tokens == pytest.approx(49, abs=0.1)
