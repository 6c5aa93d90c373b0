"""The guards every request passes before routing: API key, body size, per-key rate limit.

Each guard refuses with a `Refused` reason (the HTTP layer picks the status); nothing reaches
a backend until all of them have passed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from duotone_contracts.api.v1alpha1 import RateLimitSpec
from duotone_router.keys import ApiKeys, bearer_token
from duotone_router.policy.ratelimit import TokenBucket, take
from duotone_router.policy.reasons import Reason, Refused

ANONYMOUS = "anonymous"
"""The key name of every request to an endpoint without API keys."""


def authenticate(keys: ApiKeys | None, authorization: str | None) -> str:
    """The name of the caller's API key (ANONYMOUS when the endpoint has no keys)."""
    if keys is None:
        return ANONYMOUS
    token = bearer_token(authorization)
    if token is None:
        raise Refused(Reason.MISSING_API_KEY, "missing API key: send 'Authorization: Bearer <key>'")
    name = keys.identify(token)
    if name is None:
        raise Refused(Reason.INVALID_API_KEY, "invalid API key")
    return name


async def read_body(
    content_length: int | None, read: Callable[[int], Awaitable[bytes]], limit: int
) -> bytes:
    """The request body, refused as soon as it is known to exceed `limit` bytes (from the
    declared length, or from reading one byte past the limit)."""
    too_large = Refused(
        Reason.BODY_TOO_LARGE, f"body: larger than the limit of {limit} bytes", param="body"
    )
    if content_length is not None and content_length > limit:
        raise too_large
    body = await read(limit + 1)
    if len(body) > limit:
        raise too_large
    return body


@dataclass
class RateLimiter:
    """One token bucket per API key name."""

    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def admit(self, key: str, limit: RateLimitSpec, now: float) -> None:
        """Take a token from `key`'s bucket, or refuse with the seconds until one is free."""
        bucket = self.buckets.get(key) or TokenBucket.full(
            requests_per_minute=limit.requests_per_minute_per_key, burst=limit.burst, now=now
        )
        admission, self.buckets[key] = take(bucket, now)
        if not admission.allowed:
            raise Refused(
                Reason.RATE_LIMITED,
                f"rate limit of {limit.requests_per_minute_per_key} requests per minute "
                f"exceeded for key {key!r}",
                retry_after_s=admission.retry_after_s,
            )
