"""Why the router refuses a request, as reasons rather than HTTP statuses (pure).

Guards, the Images API parser, the routing policy and the dispatcher raise `Refused` with a
`Reason`; the HTTP layer turns a reason into a status, an OpenAI error type and code through
one table (`duotone_router.responses.ANSWERS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Reason(Enum):
    """Every way a request can fail before or while it is served."""

    MISSING_API_KEY = "missing_api_key"
    INVALID_API_KEY = "invalid_api_key"
    BODY_TOO_LARGE = "body_too_large"
    RATE_LIMITED = "rate_limited"
    COST_TOO_LARGE = "cost_too_large"
    """The request alone costs more than its key's per-minute work limit: no wait helps."""
    TIER_NOT_ALLOWED = "tier_not_allowed"
    """The API key may not use the tier the request names (or any tier served here)."""
    INVALID_JSON = "invalid_json"
    """The body is not a JSON object, or nests deeper than the router parses."""
    UNREADABLE_BODY = "unreadable_body"
    """The body's framing is broken (e.g. a bad chunk size): it cannot be read to its end."""
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    """The body is compressed (`Content-Encoding` other than identity): refused, not inflated."""
    INVALID_FORM = "invalid_form"
    """A multipart form (an edit) that cannot be read: wrong content type, broken framing."""
    MODERATION_BLOCKED = "moderation_blocked"
    """The prompt failed the moderation check; nothing reached a tier."""
    INVALID_VALUE = "invalid_value"
    """A field is malformed or beyond the tier's limits (also: the model refused an input)."""
    UNKNOWN_MODEL = "unknown_model"
    TIER_SELECTION_DISABLED = "tier_selection_disabled"
    TIER_NOT_SERVED = "tier_not_served"
    NO_TIER = "no_tier"
    """The routing table lists no tier."""
    TIER_SATURATED = "tier_saturated"
    """The tier's queue is full and overflow cannot serve the request."""
    TIER_UNAVAILABLE = "tier_unavailable"
    """No pod of the tier could be reached."""
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UPSTREAM_FAILED = "upstream_failed"
    INTERNAL_ERROR = "internal_error"
    """The router itself failed (a bug): answered without the details, which go to the log."""
    ROUTE_NOT_FOUND = "route_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"


@dataclass(frozen=True)
class Refused(Exception):  # noqa: N818 - a refusal is an answer, not an error of the router
    """A request the router answers with an error instead of images."""

    reason: Reason
    message: str
    param: str | None = None
    """The request field to fix, when one is at fault."""
    retry_after_s: int | None = None
    """When to retry (the Retry-After header); None: the reason's default, if any."""

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"
