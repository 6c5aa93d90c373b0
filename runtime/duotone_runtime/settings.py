"""What one runtime pod serves: the tier document from the operator plus command-line overrides.

The operator renders, per tier, a ConfigMap whose key `tier.json` holds
`{"name": "efficient" | "flagship", "spec": <TierSpec, camelCase>}` (pure parsing here; the
shell reads the file). Flags given on the command line win over the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from duotone_operator.api.sources import parse_model_source
from duotone_operator.api.v1alpha1 import TIER_NAMES, FlagshipTierSpec, TierName, TierSpec

Device = Literal["cpu", "cuda"]
DType = Literal["float32", "float16", "bfloat16"]


class TierConfigError(ValueError):
    """The tier document or an override is not usable; the message says which part."""


@dataclass(frozen=True)
class TierConfig:
    """The tier this pod serves, with the operator's spec (defaults already applied)."""

    name: TierName
    spec: TierSpec

    def document(self) -> dict[str, Any]:
        """The `tier.json` form: `{"name": ..., "spec": <camelCase spec>}`."""
        return {"name": self.name, "spec": self.spec.model_dump(mode="json")}

    def to_json(self) -> str:
        return json.dumps(self.document(), sort_keys=True, separators=(",", ":"))


def _tier_name(value: object) -> TierName:
    if value not in TIER_NAMES:
        raise TierConfigError(f"name: must be one of {', '.join(TIER_NAMES)}, got {value!r}")
    return value


def _spec(name: TierName, spec: object) -> TierSpec:
    model = FlagshipTierSpec if name == "flagship" else TierSpec
    try:
        return model.model_validate_json(json.dumps(spec))
    except ValueError as error:
        raise TierConfigError(f"spec: not a valid {name} TierSpec: {error}") from error


def parse_tier_document(text: str) -> TierConfig:
    """Parse the operator's `tier.json`."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise TierConfigError(f"tier document is not JSON: {error}") from error
    if not isinstance(document, dict) or set(document) - {"name", "spec"}:
        raise TierConfigError('tier document must be an object with keys "name" and "spec"')
    name = _tier_name(document.get("name"))
    return TierConfig(name=name, spec=_spec(name, document.get("spec")))


def default_tier(name: str, model_source: str) -> TierConfig:
    """A tier with the API's defaults for `name`, serving `model_source` (local use)."""
    tier_name = _tier_name(name)
    return TierConfig(name=tier_name, spec=_spec(tier_name, {"model": {"source": model_source}}))


def with_overrides(
    tier: TierConfig,
    *,
    name: str | None = None,
    model_source: str | None = None,
    dtype: str | None = None,
    allow_download: bool | None = None,
) -> TierConfig:
    """The tier with command-line values applied; the result is validated like the file."""
    tier_name = tier.name if name is None else _tier_name(name)
    spec = tier.spec.model_dump(mode="json")
    model = spec["model"]
    if model_source is not None:
        try:
            parse_model_source(model_source)
        except ValueError as error:
            raise TierConfigError(f"model source: {error}") from error
        model["source"] = model_source
        if not model_source.startswith("hf://"):
            model.pop("allowDownload", None)
            model.pop("tokenSecretRef", None)
    if dtype is not None:
        model["dtype"] = dtype
    if allow_download is not None:
        model["allowDownload"] = allow_download
    return TierConfig(name=tier_name, spec=_spec(tier_name, spec))


def default_device(spec: TierSpec) -> Device:
    """cuda when the tier asks for GPUs, cpu otherwise."""
    return "cuda" if spec.resources.gpus > 0 else "cpu"
