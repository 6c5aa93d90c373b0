"""Per-key token buckets for the router (pure; time is an argument)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenBucket:
    """`capacity` tokens, refilled at `rate_per_s`; one request takes one token."""

    capacity: float
    rate_per_s: float
    tokens: float
    updated_at: float

    @classmethod
    def full(cls, *, requests_per_minute: int, burst: int | None, now: float) -> TokenBucket:
        """A new key's bucket: full, sized `burst` (default one minute's worth)."""
        capacity = float(burst if burst is not None else requests_per_minute)
        return cls(capacity, requests_per_minute / 60.0, capacity, now)

    def refilled(self, now: float) -> TokenBucket:
        elapsed = max(0.0, now - self.updated_at)
        tokens = min(self.capacity, self.tokens + elapsed * self.rate_per_s)
        return TokenBucket(self.capacity, self.rate_per_s, tokens, max(now, self.updated_at))


@dataclass(frozen=True)
class Admission:
    """Whether one request may pass, and when to retry if not."""

    allowed: bool
    retry_after_s: int = 0
    """Whole seconds until a token is available (the Retry-After header)."""


def take(bucket: TokenBucket, now: float) -> tuple[Admission, TokenBucket]:
    """Take one token if there is one.

    e.g. 60 per minute, empty bucket: one token per second, so Retry-After is 1.
    """
    current = bucket.refilled(now)
    if current.tokens >= 1.0:
        spent = TokenBucket(current.capacity, current.rate_per_s, current.tokens - 1.0, now)
        return Admission(True), spent
    wait = (1.0 - current.tokens) / current.rate_per_s
    return Admission(False, max(1, math.ceil(wait))), current
