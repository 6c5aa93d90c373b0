"""The generated CRD is structural, bounded for CEL cost, complete, and never hand-edited."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from duotone_contracts.api import v1alpha1
from duotone_contracts.api.crd import build_crd
from duotone_contracts.api.rules import Rule, SpecModel
from tests.support.crd_validation import CRDValidator
from tests.support.manifests import ROOT, load_crd

CRD = load_crd()
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{key}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")


NODES = list(_nodes(SCHEMA))


def _generate_module() -> Any:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "hack" / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_crd_is_what_the_models_generate() -> None:
    assert load_crd() == build_crd()


def test_check_mode_fails_on_a_hand_edited_crd(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate = _generate_module()
    for relative in generate.GENERATED:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, tmp_path / relative)
    assert generate.main(["--check", "--root", str(tmp_path)]) == 0
    edited = tmp_path / generate.CHART_CRD_FILE
    edited.write_text(edited.read_text().replace("maximum: 100\n", "maximum: 101\n", 1))
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1
    assert "hand-edited" in capsys.readouterr().err


def test_schema_is_structural() -> None:
    forbidden = {"$ref", "anyOf", "oneOf", "allOf", "title", "$defs", "propertyNames"}
    for path, node in NODES:
        assert "type" in node, f"{path or '<root>'} has no type"
        assert not forbidden & node.keys(), f"{path} uses {forbidden & node.keys()}"
        if "properties" in node:
            assert "additionalProperties" not in node, path


def test_every_string_list_and_map_is_bounded_for_cel_cost() -> None:
    for path, node in NODES:
        if path == ".metadata" or path in (".apiVersion", ".kind"):
            continue
        if node["type"] == "string":
            assert "maxLength" in node or "enum" in node, f"{path} string without maxLength"
        if node["type"] == "array":
            assert "maxItems" in node, f"{path} list without maxItems"
        if node["type"] == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path} map without maxProperties"


def test_defaults_are_valid_under_their_own_schema() -> None:
    validator = CRDValidator(CRD)
    for path, node in NODES:
        if "default" in node and node["type"] != "object":
            errors: list[Any] = []
            validator._check(
                {k: v for k, v in node.items() if k != "default"}, node["default"], path, errors
            )
            assert errors == [], path


def _all_rules() -> list[Rule]:
    models = [
        v for v in vars(v1alpha1).values() if isinstance(v, type) and issubclass(v, SpecModel)
    ]
    return [rule for model in models for rule in model.rules] + [v1alpha1.NAME_RULE]


def test_every_rule_is_in_the_crd_and_compiles() -> None:
    in_crd = [
        rule["rule"] for _, node in NODES for rule in node.get("x-kubernetes-validations", [])
    ]
    validator = CRDValidator(CRD)
    for rule in _all_rules():
        assert rule.cel in in_crd, rule.message
        validator.program(rule.cel)
    for _, node in NODES:
        for rule in node.get("x-kubernetes-validations", []):
            assert rule["message"].strip(), "every rule explains itself"


def test_names_columns_and_subresources() -> None:
    names = CRD["spec"]["names"]
    assert CRD["metadata"]["name"] == "imagemodeldeployments.duotone.io"
    assert names["shortNames"] == ["imd"]
    assert names["categories"] == ["duotone"]
    assert CRD["spec"]["scope"] == "Namespaced"
    assert VERSION["name"] == "v1alpha1"
    assert VERSION["served"]
    assert VERSION["storage"]
    assert VERSION["subresources"] == {"status": {}}
    columns = [c["name"] for c in VERSION["additionalPrinterColumns"]]
    assert columns == ["Ready", "Endpoint", "Efficient", "Flagship", "P50", "Age"]


def test_conditions_merge_by_type() -> None:
    conditions = SCHEMA["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_tiers_have_their_own_defaults() -> None:
    tiers = SCHEMA["properties"]["spec"]["properties"]["tiers"]["properties"]
    steps = {t: tiers[t]["properties"]["defaults"]["properties"]["steps"]["default"] for t in tiers}
    assert steps == {"efficient": 4, "flagship": 30}


def test_docs_list_every_validation_rule() -> None:
    """docs/api.md promises the full list of rules; keep it true."""
    doc = (ROOT / "docs" / "api.md").read_text()
    missing = [rule.message for rule in _all_rules() if rule.message not in doc]
    assert missing == []
