"""The chart's PrometheusRule and dashboard queries, checked by promtool (Debian's prometheus
package): every expression parses, and tests/promtool/ fires and does not fire each alert."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from duotone_monitoring.dashboard import build_dashboard
from tests.support.helm import rule_groups, write_rule_file
from tests.support.manifests import ROOT

PROMTOOL_TESTS = sorted((ROOT / "tests" / "promtool").glob("*_test.yaml"))
ALERTS = {
    "DuotoneAvailabilityFastBurn",
    "DuotoneAvailabilitySlowBurn",
    "DuotoneLatencyFastBurn",
    "DuotoneLatencySlowBurn",
    "DuotoneOperatorDown",
    "DuotoneOperatorReconcileErrors",
    "DuotoneOperatorReconcileStalled",
    "DuotoneOperatorWatchStale",
    "DuotoneOperatorNoLeader",
    "DuotoneOperatorSplitBrain",
    "DuotoneAutoscalerAtMax",
    "DuotoneAutoscalerStalled",
    "DuotoneAutoscalerErrors",
}
DASHBOARD_VARIABLES = {
    "$namespace": "images",
    "$imd": "sd",
    "$__rate_interval": "2m",
    "${datasource}": "prometheus",
}


def promtool(*args: str, cwd: Path) -> str:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool not found: run `make tools` (Debian's prometheus package)")
    result = subprocess.run(
        [binary, *args], capture_output=True, text=True, cwd=cwd, check=False, timeout=120
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def dashboard_queries() -> list[str]:
    """Every PromQL of the dashboard: panel targets and annotation queries."""
    dashboard = build_dashboard()
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    return queries


def substitute(expr: str) -> str:
    for variable, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown dashboard variable in {expr}"
    return expr


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({}, id="default objectives"),
        pytest.param(
            {"prometheusRule": {"slo": {"availability": 0.9995, "latency": 0.9}}},
            id="custom objectives",
        ),
    ],
)
def test_rules_pass_promtool_check(values: dict[str, Any], tmp_path: Path) -> None:
    path = write_rule_file(values, tmp_path)
    out = promtool("check", "rules", str(path), cwd=tmp_path)
    assert "SUCCESS" in out
    alerts = {r["alert"] for g in rule_groups(values, tmp_path) for r in g["rules"] if "alert" in r}
    assert alerts == ALERTS


def test_custom_objectives_change_the_burn_thresholds(tmp_path: Path) -> None:
    def fast_burn(values: dict[str, Any]) -> str:
        groups = rule_groups(values, tmp_path)
        rule = next(
            r for g in groups for r in g["rules"] if r.get("alert") == "DuotoneAvailabilityFastBurn"
        )
        return str(rule["expr"])

    assert "(14.4 * 0.005)" in fast_burn({})
    assert "(14.4 * 0.001)" in fast_burn({"prometheusRule": {"slo": {"availability": 0.999}}})


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=[p.name for p in PROMTOOL_TESTS])
def test_alerts_fire_and_stay_quiet_on_synthetic_series(test_file: Path, tmp_path: Path) -> None:
    write_rule_file({}, tmp_path)
    shutil.copy(test_file, tmp_path / test_file.name)
    out = promtool("test", "rules", test_file.name, cwd=tmp_path)
    assert "SUCCESS" in out


def test_every_alert_has_a_promtool_test_that_fires_it() -> None:
    fired = set()
    for path in PROMTOOL_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    assert fired == ALERTS


def test_every_alert_has_a_runbook_section(tmp_path: Path) -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    headings = {m.group(1) for m in re.finditer(r"^## (\w+)$", runbooks, re.MULTILINE)}
    assert headings >= ALERTS
    for group in rule_groups({}, tmp_path):
        for rule in group["rules"]:
            if "alert" in rule:
                anchor = rule["alert"].lower()
                assert rule["annotations"]["runbook_url"].endswith(f"#{anchor}")


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool parses each query (variables substituted) as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute(expr)}
        for i, expr in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert "SUCCESS" in promtool("check", "rules", str(path), cwd=tmp_path)


def test_dashboard_reads_only_recording_rules_the_chart_defines(tmp_path: Path) -> None:
    recorded = {r["record"] for g in rule_groups({}, tmp_path) for r in g["rules"] if "record" in r}
    used = {
        name for expr in dashboard_queries() for name in re.findall(r"duotone:[a-z0-9_:]+", expr)
    }
    assert used
    assert used <= recorded, used - recorded
