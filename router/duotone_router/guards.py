"""The guards every request passes before routing: API key, body encoding and size, per-key
rate limit.

Each guard refuses with a `Refused` reason (the HTTP layer picks the status); nothing reaches
a backend until all of them have passed.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from duotone_contracts.api.v1alpha1 import RateLimitSpec
from duotone_contracts.limits import PRIORITY_RANGE
from duotone_router.keys import ApiKeys, bearer_token
from duotone_router.policy.ratelimit import TokenBucket, take
from duotone_router.policy.reasons import Reason, Refused

ANONYMOUS = "anonymous"
"""The key name of every request to an endpoint without API keys."""


def authenticate(keys: ApiKeys | None, authorization: str | None) -> str:
    """The name of the caller's API key (ANONYMOUS when the endpoint has no keys).

    `authorization` is the header as the HTTP server decoded it: any bytes, including ones that
    are not UTF-8 (lone surrogates), are refused as an invalid key, never an error."""
    if keys is None:
        return ANONYMOUS
    token = bearer_token(authorization)
    if token is None:
        raise Refused(Reason.MISSING_API_KEY, "missing API key: send 'Authorization: Bearer <key>'")
    name = keys.identify(token)
    if name is None:
        raise Refused(Reason.INVALID_API_KEY, "invalid API key")
    return name


IDENTITY = "identity"
"""The only Content-Encoding accepted: compressed bodies are refused (415), not inflated, so a
small body can never grow past the limit inside the router."""

UNREADABLE_BODY_ERRORS: tuple[type[Exception], ...] = (RequestPayloadError, HttpProcessingError)
"""What reading a body with broken framing raises (bad chunk size, bad chunk extension)."""


def check_content_encoding(values: Sequence[str]) -> None:
    """Refuse a body compressed in any way (every `Content-Encoding` header, each possibly a
    list, e.g. `gzip, identity`); no header, empty or `identity` pass."""
    for value in values:
        for listed in value.split(","):
            coding = listed.strip()
            if coding and coding.lower() != IDENTITY:
                shown = coding.encode("ascii", "backslashreplace").decode("ascii")[:64]
                raise Refused(
                    Reason.UNSUPPORTED_ENCODING,
                    f"Content-Encoding: {shown!r} is not supported; send the body uncompressed",
                    param="Content-Encoding",
                )


async def read_body(
    content_length: int | None,
    read: Callable[[int], Awaitable[bytes]],
    limit: int,
    *,
    content_encodings: Sequence[str] = (),
) -> bytes:
    """The whole request body, however it is framed (one piece, chunked, written slowly).

    Refused before reading when it is compressed or declares more than `limit` bytes, and as
    soon as what arrived exceeds `limit`: `read(n)` returns whatever has arrived (at most n
    bytes, b"" at the end), so it is called until the end, each time for at most the bytes
    still allowed plus one; nothing beyond `limit + 1` bytes is ever held.
    """
    check_content_encoding(content_encodings)
    too_large = Refused(
        Reason.BODY_TOO_LARGE, f"body: larger than the limit of {limit} bytes", param="body"
    )
    if content_length is not None and content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await read(limit + 1 - size)
        except UNREADABLE_BODY_ERRORS as error:
            raise Refused(
                Reason.UNREADABLE_BODY,
                "body: its framing is broken (Content-Length or chunked encoding)",
                param="body",
            ) from error
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)


@dataclass
class RateLimiter:
    """A request bucket and a cost bucket per API key name; both follow the current limit."""

    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    cost_buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def admit(self, key: str, limit: RateLimitSpec, now: float) -> None:
        """Take a request token from `key`'s bucket, or refuse with the seconds until one is
        free."""
        per_minute = limit.requests_per_minute_per_key
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = TokenBucket.full(per_minute=per_minute, burst=limit.burst, now=now)
        else:
            bucket = bucket.retuned(per_minute=per_minute, burst=limit.burst, now=now)
        admission, self.buckets[key] = take(bucket, now)
        if not admission.allowed:
            raise Refused(
                Reason.RATE_LIMITED,
                f"rate limit of {per_minute} requests per minute exceeded for key {key!r}",
                retry_after_s=admission.retry_after_s,
            )

    def charge(self, key: str, limit: RateLimitSpec, cost: float, now: float) -> None:
        """Take `cost` from `key`'s cost bucket (when the limit counts cost), or refuse: with
        the seconds until it fits, or as too large when it never can."""
        per_minute = limit.cost_per_minute_per_key
        if per_minute is None:
            self.cost_buckets.pop(key, None)
            return
        bucket = self.cost_buckets.get(key)
        if bucket is None:
            bucket = TokenBucket.full(per_minute=per_minute, burst=None, now=now)
        else:
            bucket = bucket.retuned(per_minute=per_minute, burst=None, now=now)
        admission, self.cost_buckets[key] = take(bucket, now, cost)
        if admission.never:
            raise Refused(
                Reason.COST_TOO_LARGE,
                f"n, steps, size: this request costs {cost:g} image-steps at 512x512, more "
                f"than the {per_minute} per minute allowed for key {key!r}; ask for fewer "
                "images, fewer steps or a smaller size",
                param="n",
            )
        if not admission.allowed:
            raise Refused(
                Reason.RATE_LIMITED,
                f"rate limit of {per_minute} image-steps (512x512) per minute exceeded for key "
                f"{key!r}: this request costs {cost:g}",
                retry_after_s=admission.retry_after_s,
            )

    def follow(self, limit: RateLimitSpec, now: float) -> None:
        """A reload changed the limit: every bucket is refilled at its old rate until `now` and
        runs at the new one from then on (not from its key's next request)."""
        for key, bucket in self.buckets.items():
            self.buckets[key] = bucket.retuned(
                per_minute=limit.requests_per_minute_per_key, burst=limit.burst, now=now
            )
        cost_per_minute = limit.cost_per_minute_per_key
        if cost_per_minute is None:
            self.cost_buckets.clear()
            return
        for key, bucket in self.cost_buckets.items():
            self.cost_buckets[key] = bucket.retuned(per_minute=cost_per_minute, burst=None, now=now)

    def forget_except(self, keys: set[str]) -> None:
        """Drop the buckets of keys that no longer exist (after a reload of the keys)."""
        for buckets in (self.buckets, self.cost_buckets):
            for gone in set(buckets) - keys:
                del buckets[gone]


PRIORITY_HEADER = "X-Duotone-Priority"
"""A request's admission priority in a step-batched tier (an integer; it may only lower the
priority its API key has, `RoutingTable.key_priorities`)."""


def request_priority(header: str | None, key_priority: int) -> int:
    """The priority a request runs at: its key's, or lower when the header asks for less.

    e.g. a key of priority 10 sending "-5" runs at -5, sending "50" at 10; no header: 10.
    """
    if header is None:
        return key_priority
    low, high = PRIORITY_RANGE
    text = header.strip()
    if not re.fullmatch(r"[-+]?[0-9]{1,4}", text) or not low <= int(text) <= high:
        raise Refused(
            Reason.INVALID_VALUE,
            f"{PRIORITY_HEADER} must be an integer between {low} and {high}",
            param=PRIORITY_HEADER,
        )
    return min(int(text), key_priority)
