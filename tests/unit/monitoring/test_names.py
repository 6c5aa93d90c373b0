"""The dashboard and the alert rules query only series that someone exports: every name is a
metric of the contract or a recording rule the rules define."""

from __future__ import annotations

import json
import re

import pytest

from duotone_contracts import metrics
from duotone_monitoring import rules
from duotone_monitoring.dashboard import build_dashboard

pytestmark = pytest.mark.unit

SERIES = re.compile(r"\b((?:duotone|nv)_[a-z0-9_]+|duotone:[a-z0-9_:]+)")
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


def _recorded(template: str) -> set[str]:
    names = set()
    for record in re.findall(r"- record: (.+)$", template, flags=re.MULTILINE):
        if "{{ . }}" in record:
            names |= {record.replace("{{ . }}", window) for window in WINDOWS}
        else:
            names.add(record)
    return names


def _queried(text: str) -> set[str]:
    found = set(SERIES.findall(text))
    return {
        name for name in found if not name.startswith(("duotone_monitoring", "duotone_contracts"))
    }


def test_every_series_the_rules_read_is_exported_or_recorded() -> None:
    template = rules.prometheus_rule_template()
    recorded = _recorded(template)
    expanded = template.replace("{{ . }}", "5m")
    assert not _queried(expanded) - metrics.series_names() - recorded
    assert rules.TIER_LATENCY_P50 in recorded
    assert metrics.ROUTER_REQUESTS.name in template


def test_every_series_the_dashboard_reads_is_exported_or_recorded() -> None:
    recorded = _recorded(rules.prometheus_rule_template())
    queried = _queried(json.dumps(build_dashboard()))
    assert queried, "the dashboard reads some series"
    assert not queried - metrics.series_names() - recorded


def test_the_contract_declares_each_family_once() -> None:
    names = [metric.name for metric in metrics.catalogue()]
    assert len(names) == len(set(names))
    assert all(name.startswith(("duotone_", "nv_inference_")) for name in names)
