"""The routing table: what the router needs to route and guard requests, from the operator.

The operator builds a `RoutingTable` from the IMD and writes it into the router's ConfigMap as
`router.json` (`RoutingTable.to_json`); the router parses the mounted file with
`parse_routing_table` and re-reads it when it changes. Unknown keys are ignored, so a router may
read a table from a newer operator during a rollout (pure).
"""

from __future__ import annotations

import json
from typing import Any, Final

from pydantic import Field, ValidationError, field_serializer

from duotone_contracts.api.rules import LenientModel
from duotone_contracts.api.v1alpha1 import (
    BatchingMode,
    EfficientOverflowPolicy,
    ModerationSpec,
    OverflowPolicy,
    RateLimitSpec,
    RequestDefaults,
    RequestLimits,
    SLOSpec,
    TierName,
)
from duotone_contracts.api.validation import format_loc

ROUTING_TABLE_FILE: Final = "router.json"
"""The router ConfigMap's key, and the file name where the router pod mounts it."""


class TierRoute(LenientModel):
    """One tier: its Service, the limits the router enforces and its deadline."""

    service: str
    """The headless Service whose EndpointSlices list the tier's pods."""
    host: str
    grpc_port: int
    http_port: int
    metrics_port: int
    defaults: RequestDefaults
    limits: RequestLimits
    slo: SLOSpec
    request_timeout_ms: int
    """The router's deadline for one request to the tier (Triton's queue timeout too)."""
    max_queue_size: int
    batching_mode: BatchingMode = "request"
    """step: the tier's model is decoupled (it answers over a gRPC stream, not unary calls)."""


class Traffic(LenientModel):
    """How requests are split between the tiers and where a saturated tier's requests go."""

    efficient_percent: int = Field(ge=0, le=100)
    client_tier_selection: bool
    overflow: OverflowPolicy
    efficient_overflow: EfficientOverflowPolicy


class RoutingTable(LenientModel):
    """The routing table: tiers, split, overflow, guards."""

    name: str
    namespace: str | None = None
    tiers: dict[TierName, TierRoute]
    traffic: Traffic
    rate_limit: RateLimitSpec
    max_body_bytes: int
    api_keys_path: str | None
    """Where the API keys Secret is mounted; None: the endpoint is open."""
    key_tiers: dict[str, tuple[TierName, ...]] = Field(default_factory=dict)
    """API key name -> the tiers it may use; keys not listed may use every tier."""
    key_priorities: dict[str, int] = Field(default_factory=dict)
    """API key name -> its requests' highest admission priority; keys not listed have 0."""
    max_pending_per_tier: int = 256
    """Requests one router holds for a tier with no pod to take them; more get 503."""
    moderation: ModerationSpec = Field(default_factory=ModerationSpec)
    """The prompt check (a blocklist) run before any tier sees a request."""

    @field_serializer("rate_limit")
    def _rate_limit(self, limit: RateLimitSpec) -> dict[str, Any]:
        # `burst` is written only when set (the router defaults it to a minute's worth).
        return limit.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> str:
        """The table's text: sorted keys, two-space indent, a final newline."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


class RoutingTableError(ValueError):
    """A routing table that cannot be used; the message names every bad field."""


def parse_routing_table(text: str) -> RoutingTable:
    """Parse a routing table's text."""
    try:
        return RoutingTable.model_validate_json(text)
    except ValidationError as error:
        problems = "; ".join(f"{format_loc(e['loc'])}: {e['msg']}" for e in error.errors())
        raise RoutingTableError(f"invalid routing table: {problems}") from error
