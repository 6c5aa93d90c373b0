"""Behaviour of the typed spec beyond validation: sources, effective values, builders."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from duotone_contracts.api import InvalidSpecError, ModelSource, parse_imd, parse_model_source
from duotone_contracts.api.rules import with_defaults
from duotone_contracts.api.v1alpha1 import (
    BatchingSpec,
    FlagshipBatchingSpec,
    FlagshipRequestDefaults,
    FlagshipRequestLimits,
    FlagshipSLOSpec,
    FlagshipTierSpec,
    RequestDefaults,
    RequestLimits,
    SLOSpec,
    TierSpec,
)
from tests.support.builders import imd


@pytest.mark.parametrize(
    ("source", "parsed"),
    [
        pytest.param(
            "pvc://model-store/sdxl-turbo",
            ModelSource(kind="pvc", location="model-store", path="sdxl-turbo"),
            id="pvc with a path inside the claim",
        ),
        pytest.param(
            "pvc://model-store", ModelSource(kind="pvc", location="model-store"), id="pvc root"
        ),
        pytest.param(
            "hf://stabilityai/sdxl-turbo@main",
            ModelSource(kind="hf", location="stabilityai/sdxl-turbo", revision="main"),
            id="hf with revision",
        ),
        pytest.param(
            "hf://stabilityai/sdxl-turbo",
            ModelSource(kind="hf", location="stabilityai/sdxl-turbo"),
            id="hf without revision",
        ),
        pytest.param(
            "file:///models/sdxl", ModelSource(kind="file", location="/models/sdxl"), id="file"
        ),
        pytest.param("builtin://tiny", ModelSource(kind="builtin", location="tiny"), id="builtin"),
    ],
)
def test_parse_model_source(source: str, parsed: ModelSource) -> None:
    assert parse_model_source(source) == parsed


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("s3://bucket/model", id="unsupported scheme"),
        pytest.param("pvc://store/../../etc", id="path traversal"),
        pytest.param("file://relative/path", id="relative file path"),
        pytest.param("hf://just-a-name", id="hf without org"),
        pytest.param("builtin://large", id="unknown builtin"),
    ],
)
def test_parse_model_source_rejects_with_the_accepted_forms(source: str) -> None:
    with pytest.raises(ValueError, match=r"pvc://<claim>/<path>, hf://"):
        parse_model_source(source)


@pytest.mark.parametrize(
    ("manifest", "percent"),
    [
        pytest.param(imd("a").tier("efficient").tier("flagship").build(), 80, id="both tiers: 80"),
        pytest.param(
            imd("a").tier("efficient").tier("flagship").traffic(efficientPercent=35).build(),
            35,
            id="both tiers: as configured",
        ),
        pytest.param(imd("a").tier("efficient").build(), 100, id="efficient only: all"),
        pytest.param(imd("a").tier("flagship").build(), 0, id="flagship only: none"),
    ],
)
def test_effective_efficient_percent(manifest: dict[str, object], percent: int) -> None:
    assert parse_imd(manifest).spec.efficient_percent() == percent


def test_flagship_and_efficient_tiers_default_differently() -> None:
    spec = parse_imd(imd("sd").tier("efficient").tier("flagship").build()).spec
    assert spec.tiers.efficient is not None
    assert spec.tiers.flagship is not None
    assert (spec.tiers.efficient.defaults.steps, spec.tiers.flagship.defaults.steps) == (4, 30)
    assert spec.tiers.flagship.slo.p50_latency_ms > spec.tiers.efficient.slo.p50_latency_ms
    assert list(spec.tiers.present()) == ["efficient", "flagship"]


def test_builder_settings_apply_to_the_selected_tier() -> None:
    manifest = imd("sd").tier("flagship", min=0, max=4).slo(p50_ms=6000).build()
    flagship = parse_imd(manifest).spec.tiers.flagship
    assert flagship is not None
    assert (flagship.replicas.minimum, flagship.replicas.maximum) == (0, 4)
    assert flagship.slo.p50_latency_ms == 6000


def test_every_error_is_reported_with_its_field() -> None:
    manifest = imd("sd").tier("efficient", min=9, max=2).build()
    manifest["spec"]["traffic"] = {"efficientPercent": 101, "surprise": True}
    with pytest.raises(InvalidSpecError) as raised:
        parse_imd(manifest)
    fields = {e.field for e in raised.value.errors}
    assert fields == {
        "spec.tiers.efficient.replicas.min",
        "spec.traffic.efficientPercent",
        "spec.traffic.surprise",
    }
    assert "spec.traffic.efficientPercent: Invalid value: 101" in str(raised.value)


@pytest.mark.parametrize(
    ("base", "flagship"),
    [
        pytest.param(RequestDefaults, FlagshipRequestDefaults, id="defaults"),
        pytest.param(RequestLimits, FlagshipRequestLimits, id="limits"),
        pytest.param(BatchingSpec, FlagshipBatchingSpec, id="batching"),
        pytest.param(SLOSpec, FlagshipSLOSpec, id="slo"),
        pytest.param(TierSpec, FlagshipTierSpec, id="tier"),
    ],
)
def test_flagship_models_differ_from_their_base_in_defaults_only(
    base: type[BaseModel], flagship: type[BaseModel]
) -> None:
    """Bounds and descriptions are declared once, on the efficient (base) model."""
    assert issubclass(flagship, base)
    assert set(flagship.model_fields) == set(base.model_fields)
    for name, field in flagship.model_fields.items():
        original = base.model_fields[name]
        assert field.metadata == original.metadata, name
        assert field.description == original.description, name
    assert any(
        flagship.model_fields[n].default != base.model_fields[n].default
        or flagship.model_fields[n].default_factory is not base.model_fields[n].default_factory
        for n in base.model_fields
    )


def test_a_base_bound_holds_for_the_flagship_too() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 256"):
        FlagshipBatchingSpec(max_batch_size=257)
    assert FlagshipBatchingSpec().max_batch_size == 4


def test_with_defaults_refuses_a_field_the_base_lacks() -> None:
    with pytest.raises(TypeError, match="no field 'stepz'"):

        @with_defaults(stepz=3)
        class Broken(RequestDefaults):
            """A typo in a default's name."""
