"""Examples are valid and invalid manifests are rejected with their stated field and message,
both by the pydantic models and by the generated CRD (local oracle; the API server check is
tests/e2e/test_crd_admission.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from duotone_contracts.api import InvalidSpecError, parse_imd
from tests.support.crd_validation import CRDValidator
from tests.support.manifests import InvalidCase, load_crd, load_examples, load_invalid_cases

EXAMPLES = load_examples()
INVALID = load_invalid_cases()


@pytest.fixture(scope="module")
def crd_validator() -> CRDValidator:
    return CRDValidator(load_crd())


def test_the_required_examples_exist() -> None:
    sources = [doc["spec"]["tiers"] for _, doc in EXAMPLES]
    assert any({"efficient", "flagship"} <= set(t) for t in sources), "a two-tier example"
    assert any(set(t) == {"efficient"} for t in sources), "an efficient-only example"
    assert any(t.get("flagship", {}).get("replicas", {}).get("min") == 0 for t in sources)
    assert any(
        tier["model"]["source"] == "builtin://tiny" and tier["resources"]["gpus"] == 0
        for t in sources
        for tier in t.values()
    ), "a CPU-only builtin://tiny example"


@pytest.mark.parametrize(("path", "manifest"), EXAMPLES, ids=[p.stem for p, _ in EXAMPLES])
def test_example_is_valid_for_models_and_crd(
    path: Path, manifest: dict[str, Any], crd_validator: CRDValidator
) -> None:
    imd = parse_imd(manifest)
    defaulted, errors = crd_validator.validate(manifest)
    assert errors == []
    # The API server's defaulting and pydantic's defaults produce the same spec.
    assert defaulted["spec"] == imd.spec.model_dump(mode="json", exclude_none=True)


def test_every_invalid_case_names_a_distinct_file() -> None:
    assert len(INVALID) >= 20
    assert len({c.id for c in INVALID}) == len(INVALID)


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_models_reject_invalid_manifest_naming_the_field(case: InvalidCase) -> None:
    with pytest.raises(InvalidSpecError) as raised:
        parse_imd(case.manifest)
    matching = [e for e in raised.value.errors if e.field == case.field]
    assert matching, f"no error on {case.field}; got: {raised.value}"
    assert any(case.message in e.message for e in matching), str(raised.value)


@pytest.mark.parametrize("case", INVALID, ids=[c.id for c in INVALID])
def test_crd_rejects_invalid_manifest_naming_the_field(
    case: InvalidCase, crd_validator: CRDValidator
) -> None:
    _, errors = crd_validator.validate(case.manifest)
    matching = [e for e in errors if e.field == case.field]
    assert matching, f"no error on {case.field}; got: {[str(e) for e in errors]}"
    assert any(case.message in e.message for e in matching), [str(e) for e in errors]
