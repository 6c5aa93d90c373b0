"""Per-key token buckets for the router (pure; time is an argument).

Each API key has a request bucket (one token per request) and, when the routing table sets
`costPerMinutePerKey`, a cost bucket (a request takes its cost in image-steps at 512x512,
`GenerationRequest.cost`). Buckets follow the routing table: after a reload changes a limit,
the next request finds its key's bucket resized to the new capacity and rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenBucket:
    """`capacity` tokens, refilled at `rate_per_s`."""

    capacity: float
    rate_per_s: float
    tokens: float
    updated_at: float

    @classmethod
    def full(cls, *, per_minute: float, burst: float | None, now: float) -> TokenBucket:
        """A new key's bucket: full, sized `burst` (default one minute's worth)."""
        capacity = float(burst if burst is not None else per_minute)
        return cls(capacity, per_minute / 60.0, capacity, now)

    def refilled(self, now: float) -> TokenBucket:
        elapsed = max(0.0, now - self.updated_at)
        tokens = min(self.capacity, self.tokens + elapsed * self.rate_per_s)
        return TokenBucket(self.capacity, self.rate_per_s, tokens, max(now, self.updated_at))

    def retuned(self, *, per_minute: float, burst: float | None, now: float) -> TokenBucket:
        """The same bucket under a new limit: refilled at the old rate until `now`, then the
        new capacity and rate (tokens above the new capacity are dropped).

        e.g. 600/min lowered to 6/min: a full bucket of 600 keeps 6 tokens, refilled at 0.1/s.
        """
        capacity = float(burst if burst is not None else per_minute)
        current = self.refilled(now)
        if capacity == current.capacity and per_minute / 60.0 == current.rate_per_s:
            return current
        return TokenBucket(capacity, per_minute / 60.0, min(current.tokens, capacity), now)


@dataclass(frozen=True)
class Admission:
    """Whether one request may pass, and when to retry if not."""

    allowed: bool
    retry_after_s: int = 0
    """Whole seconds until enough tokens are available (the Retry-After header)."""
    never: bool = False
    """The amount exceeds the bucket's capacity: no wait would let it pass."""


def take(bucket: TokenBucket, now: float, amount: float = 1.0) -> tuple[Admission, TokenBucket]:
    """Take `amount` tokens if there are that many.

    e.g. 60 per minute, empty bucket: one token per second, so Retry-After is 1 for one token.
    """
    current = bucket.refilled(now)
    if amount > current.capacity:
        return Admission(False, 0, never=True), current
    if current.tokens >= amount:
        spent = TokenBucket(current.capacity, current.rate_per_s, current.tokens - amount, now)
        return Admission(True), spent
    wait = (amount - current.tokens) / current.rate_per_s
    return Admission(False, max(1, math.ceil(wait))), current
