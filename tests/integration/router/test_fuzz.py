"""Fuzz the endpoint from its own OpenAPI document: no input may cause a server error."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from duotone_testbed.stack import LocalStack
from tests.integration.router.conftest import TIGHT, reconfigure


@pytest.fixture(scope="module")
def api_schema(stack: LocalStack) -> Any:
    """The router's /openapi.json, with the router's limits narrowed so that every valid
    generated request is one cheap image (the tiers themselves are unchanged)."""
    assert stack.router is not None
    tiers = {
        tier: {
            **route,
            "limits": TIGHT,
            "defaults": {**route["defaults"], "steps": 1, "width": 64, "height": 64},
        }
        for tier, route in stack.router.table["tiers"].items()
    }
    original = stack.router.table["tiers"]
    reconfigure(stack, tiers=tiers)
    yield schemathesis.openapi.from_url(f"{stack.router.url}/openapi.json")
    reconfigure(stack, tiers=original)


@pytest.mark.parametrize(
    ("path", "method", "served"),
    [
        pytest.param("/v1/images/generations", "POST", True, id="create image"),
        pytest.param("/v1/images/edits", "POST", False, id="edit image"),
        pytest.param("/v1/models", "GET", True, id="list models"),
    ],
)
def test_no_input_causes_a_server_error(
    api_schema: Any, path: str, method: str, served: bool
) -> None:
    # Hypothesis drives schemathesis' generator for the operation (positive and negative
    # cases); each case is a real HTTP call to the router.
    operation = api_schema[path][method]
    statuses: list[int] = []

    @given(case=operation.as_strategy())
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case: Any) -> None:
        response = case.call(timeout=60)
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.body, response.status_code, response.text[:300])
        if response.status_code >= 400:
            error = response.json()["error"]
            assert error["message"], response.text
            assert error["type"], response.text

    fuzz()
    if served:  # random bytes are no image: an edit's generated cases are all refused
        assert 200 in statuses, statuses  # valid inputs were generated and served, too
    assert len(statuses) > 1, statuses
