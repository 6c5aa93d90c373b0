"""The manifest audit (`make verify` runs hack/audit.py): kube-score, built from its Go module,
scores the chart and every example's children, and a CRITICAL finding fails it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.manifests import ROOT

AUDIT = ROOT / "hack" / "audit.py"


def _audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(AUDIT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )


def test_the_chart_and_every_examples_children_have_no_critical_finding() -> None:
    run = _audit()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "audit: no CRITICAL finding" in run.stdout
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        assert f"{example.stem} children" in run.stdout, example.name
    assert "chart (permissive values)" in run.stdout


def test_a_planted_critical_finding_fails_the_audit_naming_the_object(tmp_path: Path) -> None:
    # An example's children as the operator renders them, the router's disk bounds removed.
    children = list(yaml.safe_load_all((ROOT / "tests/data/golden/two-tier.yaml").read_text()))
    router = next(
        c
        for c in children
        if c["kind"] == "Deployment" and c["metadata"]["name"].endswith("router")
    )
    for bound in router["spec"]["template"]["spec"]["containers"][0]["resources"].values():
        del bound["ephemeral-storage"]
    planted = tmp_path / "planted.yaml"
    planted.write_text(yaml.safe_dump_all(children))
    run = _audit("--also", str(planted))
    assert run.returncode == 1, run.stdout + run.stderr
    critical = [line for line in run.stdout.splitlines() if line.strip().startswith("CRITICAL")]
    assert len(critical) == 2, run.stdout  # the request and the limit
    for line in critical:
        assert "planted.yaml: marketing-router/images apps/v1/Deployment" in line, line
        assert "Ephemeral Storage" in line, line
