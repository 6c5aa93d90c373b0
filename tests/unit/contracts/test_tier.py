"""The tier document: the operator writes it, the runtime reads it (one model, one format)."""

from __future__ import annotations

import json

import pytest

from duotone_contracts.api.v1alpha1 import FlagshipTierSpec, TierSpec
from duotone_contracts.tier import TierDocumentError, parse_tier_document

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
    with pytest.raises(TierDocumentError, match=message):
        parse_tier_document(text)
