"""Command-line overrides of the tier document, and the default device."""

from __future__ import annotations

import json

import pytest

from duotone_contracts.api.v1alpha1 import TierSpec
from duotone_contracts.tier import TierDocumentError, parse_tier_document
from duotone_runtime.settings import default_device, default_tier, with_overrides

pytestmark = pytest.mark.unit


def document(name: str = "efficient", **spec: object) -> str:
    body = {"model": {"source": "builtin://tiny", "dtype": "float32"}} | spec
    return json.dumps({"name": name, "spec": body})


def test_flags_override_the_document() -> None:
    tier = parse_tier_document(document())
    changed = with_overrides(
        tier, name="flagship", model_source="file:///models/x", dtype="float16"
    )
    assert changed.name == "flagship"
    assert changed.spec.model.source == "file:///models/x"
    assert changed.spec.model.dtype == "float16"
    assert changed.spec.limits.model_dump() == tier.spec.limits.model_dump(), "values kept"


def test_download_flag_applies_only_to_hf_sources() -> None:
    tier = default_tier("efficient", "hf://org/model@main")
    assert with_overrides(tier, allow_download=True).spec.model.allow_download
    with pytest.raises(TierDocumentError, match="allowDownload applies only to hf://"):
        with_overrides(tier, model_source="builtin://tiny", allow_download=True)


def test_bad_model_source_override_is_refused() -> None:
    with pytest.raises(TierDocumentError, match="model source"):
        with_overrides(default_tier("efficient", "builtin://tiny"), model_source="s3://x/y")


@pytest.mark.parametrize(
    ("gpus", "device"),
    [pytest.param(0, "cpu", id="no GPUs: cpu"), pytest.param(1, "cuda", id="a GPU: cuda")],
)
def test_default_device(gpus: int, device: str) -> None:
    spec = TierSpec.model_validate(
        {"model": {"source": "builtin://tiny"}, "resources": {"gpus": gpus}}
    )
    assert default_device(spec) == device
