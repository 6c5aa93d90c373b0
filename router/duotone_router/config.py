"""The static backends file (local discovery): tier -> gRPC addresses of its Triton servers.

The routing table itself is a contract (`duotone_contracts.routing_table`); this file is the
router's own local alternative to EndpointSlices, re-read when it changes (pure parsing here).
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, ValidationError

from duotone_contracts.api.v1alpha1 import TierName
from duotone_contracts.api.validation import format_loc


class ConfigError(ValueError):
    """A backends file that cannot be used; the message names the field."""


class StaticBackends(BaseModel):
    """Local discovery: tier -> gRPC addresses (host:port) of its Triton servers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tiers: dict[TierName, tuple[str, ...]]


def parse_static_backends(text: str) -> dict[TierName, tuple[str, ...]]:
    """`{"tiers": {"efficient": ["127.0.0.1:8001"]}}` -> tier -> addresses."""
    try:
        return dict(StaticBackends.model_validate(json.loads(text)).tiers)
    except ValidationError as error:
        detail = "; ".join(f"{format_loc(e['loc'])}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"invalid backends file: {detail}") from error
    except json.JSONDecodeError as error:
        raise ConfigError(f"invalid backends file: {error}") from error
