"""The router's inputs on disk: the routing table (the operator's ConfigMap) and, locally, a
static backends file. Both are re-read when they change (pure parsing here; polling in app)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from duotone_operator.api.v1alpha1 import (
    EfficientOverflowPolicy,
    OverflowPolicy,
    RateLimitSpec,
    RequestDefaults,
    RequestLimits,
    SLOSpec,
    TierName,
)
from duotone_operator.api.validation import format_loc
from duotone_operator.policy.routing import TrafficPolicy


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, extra="ignore", frozen=True
    )


class TierRoute(_Wire):
    """One tier in the routing table (see render/router.py, which writes it)."""

    service: str
    host: str
    grpc_port: int
    http_port: int
    metrics_port: int
    defaults: RequestDefaults
    limits: RequestLimits
    slo: SLOSpec
    request_timeout_ms: int
    max_queue_size: int


class Traffic(_Wire):
    efficient_percent: int = Field(ge=0, le=100)
    client_tier_selection: bool = True
    overflow: OverflowPolicy = "efficient"
    efficient_overflow: EfficientOverflowPolicy = "reject"

    def policy(self) -> TrafficPolicy:
        return TrafficPolicy(
            efficient_percent=self.efficient_percent,
            client_tier_selection=self.client_tier_selection,
            overflow=self.overflow,
            efficient_overflow=self.efficient_overflow,
        )


class RouterConfig(_Wire):
    """The routing table: tiers, split, overflow, guards."""

    name: str
    namespace: str | None = None
    tiers: dict[TierName, TierRoute]
    traffic: Traffic
    rate_limit: RateLimitSpec = Field(default_factory=RateLimitSpec)
    max_body_bytes: int = 65536
    api_keys_path: str | None = None


class ConfigError(ValueError):
    """A routing table or backends file that cannot be used; the message names the field."""


def _problems(error: ValidationError) -> str:
    return "; ".join(f"{format_loc(e['loc'])}: {e['msg']}" for e in error.errors())


def parse_router_config(text: str) -> RouterConfig:
    try:
        return RouterConfig.model_validate_json(text)
    except ValidationError as error:
        raise ConfigError(f"invalid routing table: {_problems(error)}") from error


def load_router_config(path: Path) -> RouterConfig:
    return parse_router_config(path.read_text())


class StaticBackends(BaseModel):
    """Local discovery: tier -> gRPC addresses (host:port) of its Triton servers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tiers: dict[TierName, tuple[str, ...]]


def parse_static_backends(text: str) -> dict[TierName, tuple[str, ...]]:
    """`{"tiers": {"efficient": ["127.0.0.1:8001"]}}` -> tier -> addresses."""
    try:
        return dict(StaticBackends.model_validate(json.loads(text)).tiers)
    except (ValidationError, json.JSONDecodeError) as error:
        detail = _problems(error) if isinstance(error, ValidationError) else str(error)
        raise ConfigError(f"invalid backends file: {detail}") from error
