"""What one runtime pod serves: the tier document from the operator plus command-line overrides.

The operator renders, per tier, a ConfigMap whose key `tier.json` holds the tier document
(`duotone_contracts.tier`); the shell reads the file. Flags given on the command line win over
the file, and the result is validated like the file.
"""

from __future__ import annotations

from typing import Literal

from duotone_contracts.api.sources import parse_model_source
from duotone_contracts.api.v1alpha1 import TierSpec
from duotone_contracts.tier import TierDocument, TierDocumentError, tier_name, tier_spec

Device = Literal["cpu", "cuda"]


def default_tier(name: str, model_source: str) -> TierDocument:
    """A tier with the API's defaults for `name`, serving `model_source` (local use)."""
    tier = tier_name(name)
    return TierDocument(name=tier, spec=tier_spec(tier, {"model": {"source": model_source}}))


def with_overrides(
    tier: TierDocument,
    *,
    name: str | None = None,
    model_source: str | None = None,
    dtype: str | None = None,
    allow_download: bool | None = None,
) -> TierDocument:
    """The tier with command-line values applied; the result is validated like the file."""
    new_name = tier.name if name is None else tier_name(name)
    spec = tier.spec.model_dump(mode="json")
    model = spec["model"]
    if model_source is not None:
        try:
            parse_model_source(model_source)
        except ValueError as error:
            raise TierDocumentError(f"model source: {error}") from error
        model["source"] = model_source
        if not model_source.startswith("hf://"):
            model.pop("allowDownload", None)
            model.pop("tokenSecretRef", None)
    if dtype is not None:
        model["dtype"] = dtype
    if allow_download is not None:
        model["allowDownload"] = allow_download
    return TierDocument(name=new_name, spec=tier_spec(new_name, spec))


def default_device(spec: TierSpec) -> Device:
    """cuda when the tier asks for GPUs, cpu otherwise."""
    return "cuda" if spec.resources.gpus > 0 else "cpu"
