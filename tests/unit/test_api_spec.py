"""Behaviour of the typed spec beyond validation: sources, effective values, builders."""

from __future__ import annotations

import pytest

from duotone_operator.api import InvalidSpecError, ModelSource, parse_imd, parse_model_source
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
