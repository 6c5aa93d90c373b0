"""Round trip: models -> generated CRD -> validation agrees with the models.

Hypothesis draws manifests near every bound and rule; the pydantic models and the generated CRD
(structural defaults + OpenAPI checks + CEL) must both accept or both reject, and when they
accept they must default the spec identically.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duotone_contracts.api import InvalidSpecError, parse_imd
from tests.support.crd_validation import CRDValidator
from tests.support.manifests import load_crd

VALIDATOR = CRDValidator(load_crd())


def mostly(
    valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """A field that is valid about 19 times in 20, so whole manifests are often accepted and
    each rule's boundary is reached with the rest of the manifest valid."""
    return st.integers(0, 19).flatmap(lambda k: invalid if k == 0 else valid)


def _some(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


def _choice(*values: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


# Ranges overlap on purpose (steps vs maxSteps, min vs max, delay vs timeout): the cross-field
# rules are hit, including equality, which pins `<=` against `<`.
steps = mostly(st.integers(1, 10), _choice(0, 501, "4", 4.5))
pixels = mostly(_choice(64, 256, 512, 1024, 1536), _choice(0, 60, 500, 4104))
guidance = mostly(_choice(0.0, 5.0, 7.5, 12, 20.0), _choice(-0.5, 50.5, "5"))
source = mostly(
    _choice("builtin://tiny", "pvc://models/sdxl", "hf://org/name@main", "file:///models/x"),
    _choice("builtin://huge", "pvc://Models/x", "pvc://m/../x", "hf://org", "s3://b/x", ""),
)
quantity = mostly(_choice("1", "500m", "2Gi", "1.5", "32Gi"), _choice("four", "", "1 Gi"))

model = st.fixed_dictionaries(
    {"source": source},
    optional={
        "dtype": mostly(_choice("float32", "bfloat16", "float16"), _choice("fp8")),
        "allowDownload": st.booleans(),
        "tokenSecretRef": st.fixed_dictionaries(
            {"name": mostly(_choice("hf-token"), _choice("Bad_Name"))}
        ),
        "cacheClaimName": mostly(_choice("hf-cache"), _choice("Bad_Name")),
    },
)
tier = st.fixed_dictionaries(
    {"model": model},
    optional={
        "defaults": _some(steps=steps, guidanceScale=guidance, width=pixels, height=pixels),
        "limits": _some(
            maxSteps=steps,
            maxWidth=pixels,
            maxHeight=pixels,
            maxGuidanceScale=guidance,
            maxImagesPerRequest=mostly(st.integers(1, 16), _choice(0, 17)),
        ),
        "batching": _some(
            maxBatchSize=mostly(st.integers(1, 64), _choice(0, 257)),
            maxQueueDelayMs=mostly(_choice(0, 10, 400, 1000), _choice(-1, 10001)),
            requestTimeoutMs=mostly(_choice(100, 400, 1000, 30000), _choice(99)),
        ),
        "replicas": _some(
            min=mostly(st.integers(0, 4), _choice(-1, 1001)),
            max=mostly(st.integers(1, 4), _choice(0, 1001)),
        ),
        "resources": _some(
            gpus=mostly(st.integers(0, 2), _choice(-1, 17)), cpu=quantity, memory=quantity
        ),
        "slo": _some(p50LatencyMs=mostly(_choice(1, 400, 6000), _choice(0))),
    },
)
spec = st.fixed_dictionaries(
    {
        "runtime": st.fixed_dictionaries({"image": mostly(_choice("r:1"), _choice("", "a b"))}),
        "tiers": mostly(
            st.fixed_dictionaries({"efficient": tier}, optional={"flagship": tier})
            | st.fixed_dictionaries({"flagship": tier}),
            st.just({}),
        ),
    },
    optional={
        "traffic": _some(
            efficientPercent=mostly(st.integers(0, 100), _choice(-1, 101)),
            overflow=mostly(_choice("efficient", "reject"), _choice("flagship")),
            clientTierSelection=st.booleans(),
        ),
        "autoscaling": _some(
            gpuBudget=mostly(st.integers(1, 8), _choice(0)),
            metrics=_some(
                source=mostly(_choice("direct", "prometheus"), _choice("kafka")),
                prometheusUrl=mostly(_choice("http://p:9090"), _choice("p:9090")),
            ),
        ),
    },
)
manifests = st.builds(
    lambda name, s: {
        "apiVersion": "duotone.io/v1alpha1",
        "kind": "ImageModelDeployment",
        "metadata": {"name": name},
        "spec": s,
    },
    mostly(_choice("sd", "ok-name", "a" * 40), _choice("a" * 41, "9x")),
    spec,
)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests)
def test_models_and_generated_crd_agree(manifest: dict[str, Any]) -> None:
    defaulted, crd_errors = VALIDATOR.validate(manifest)
    try:
        imd = parse_imd(manifest)
    except InvalidSpecError as exc:
        rejected_by_models = str(exc)
    else:
        rejected_by_models = ""
    if rejected_by_models:
        assert crd_errors, f"models reject ({rejected_by_models}) but the CRD accepts"
        return
    assert not crd_errors, f"models accept but the CRD rejects: {[str(e) for e in crd_errors]}"
    assert defaulted["spec"] == imd.spec.model_dump(mode="json", exclude_none=True)
