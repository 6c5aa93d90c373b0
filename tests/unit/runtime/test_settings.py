"""The tier document the operator renders, and command-line overrides."""

from __future__ import annotations

import json

import pytest

from duotone_operator.api.v1alpha1 import FlagshipTierSpec, TierSpec
from duotone_runtime.settings import (
    TierConfigError,
    default_device,
    default_tier,
    parse_tier_document,
    with_overrides,
)

pytestmark = pytest.mark.unit


def document(name: str = "efficient", **spec: object) -> str:
    body = {"model": {"source": "builtin://tiny", "dtype": "float32"}} | spec
    return json.dumps({"name": name, "spec": body})


def test_operator_document_round_trips() -> None:
    spec = TierSpec.model_validate(
        {"model": {"source": "pvc://models/sdxl", "dtype": "bfloat16"}, "limits": {"maxSteps": 6}}
    )
    rendered = json.dumps({"name": "efficient", "spec": spec.model_dump(mode="json")})
    tier = parse_tier_document(rendered)
    assert tier.spec == spec
    assert parse_tier_document(tier.to_json()) == tier


def test_flagship_document_gets_flagship_defaults() -> None:
    tier = parse_tier_document(document("flagship"))
    assert isinstance(tier.spec, FlagshipTierSpec)
    assert tier.spec.defaults.steps == 30
    assert tier.spec.batching.max_batch_size == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("not json", "not JSON", id="not JSON"),
        pytest.param('{"name": "efficient"}', "spec: not a valid", id="spec missing"),
        pytest.param(document("premium"), "name: must be one of", id="unknown tier name"),
        pytest.param(
            json.dumps({"name": "efficient", "spec": {}, "extra": 1}),
            'keys "name" and "spec"',
            id="unknown top-level key",
        ),
        pytest.param(
            document(defaults={"steps": 20}), "defaults.steps must not exceed", id="rule broken"
        ),
    ],
)
def test_bad_documents_are_refused(text: str, message: str) -> None:
    with pytest.raises(TierConfigError, match=message):
        parse_tier_document(text)


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
    with pytest.raises(TierConfigError, match="allowDownload applies only to hf://"):
        with_overrides(tier, model_source="builtin://tiny", allow_download=True)


def test_bad_model_source_override_is_refused() -> None:
    with pytest.raises(TierConfigError, match="model source"):
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
