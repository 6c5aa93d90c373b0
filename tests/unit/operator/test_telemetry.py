"""The operator exports exactly the contract's operator and autoscaler families."""

from __future__ import annotations

import prometheus_client
import pytest

from duotone_contracts.metrics import catalogue
from duotone_operator.adapters import telemetry

pytestmark = pytest.mark.unit

PREFIXES = ("duotone_operator_", "duotone_autoscaler_")


def test_the_operator_exports_exactly_the_contracts_operator_families() -> None:
    assert telemetry.RECONCILES is not None
    exported = {
        family.name
        for family in prometheus_client.REGISTRY.collect()
        if family.name.startswith(PREFIXES)
    }
    declared = {
        metric.name.removesuffix("_total")  # prometheus_client's family name of a counter
        for metric in catalogue()
        if metric.name.startswith(PREFIXES)
    }
    assert exported == declared
