"""The real Helm CLI (built from its Go module by `make tools`) and the chart's rendered output."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.manifests import ROOT

CHART = ROOT / "charts" / "duotone"
INSTALL_TOOLS = ROOT / "hack" / "install-tools.sh"


@functools.cache
def helm_binary() -> str:
    found = subprocess.run(
        [str(INSTALL_TOOLS), "--print-helm"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not found:
        pytest.fail("helm not found: run `make tools` (builds helm from its Go module)")
    return found


class HelmError(RuntimeError):
    """helm exited with a non-zero status; the message carries its stderr."""


def helm(*args: str, kubeconfig: Path | None = None, timeout_s: float = 300) -> str:
    """Run helm (never against a user's own cluster: the kubeconfig is always explicit)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    argv = [helm_binary(), *args]
    if kubeconfig is not None:
        argv.append(f"--kubeconfig={kubeconfig}")
    result = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
    )
    if result.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def values_args(values: Mapping[str, Any], workdir: Path) -> list[str]:
    """`--values FILE` for a values dict (JSON is YAML)."""
    if not values:
        return []
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.json"
    path.write_text(json.dumps(values))
    return [f"--values={path}"]


def render(
    values: Mapping[str, Any],
    workdir: Path,
    *,
    release: str = "duotone",
    namespace: str = "duotone-system",
    chart: Path = CHART,
) -> list[dict[str, Any]]:
    """`helm template` of the chart with these values: the objects, parsed."""
    out = helm(
        "template",
        release,
        str(chart),
        f"--namespace={namespace}",
        *values_args(values, workdir),
    )
    return [doc for doc in yaml.safe_load_all(out) if doc]


def only(objects: Sequence[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one rendered object of this kind (and name)."""
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def rule_groups(values: Mapping[str, Any], workdir: Path) -> list[dict[str, Any]]:
    """The PrometheusRule's groups as the chart renders them (prometheusRule.enabled)."""
    rule_values = {**values.get("prometheusRule", {}), "enabled": True}
    objects = render({**values, "prometheusRule": rule_values}, workdir)
    groups: list[dict[str, Any]] = only(objects, "PrometheusRule")["spec"]["groups"]
    return groups


def write_rule_file(values: Mapping[str, Any], workdir: Path) -> Path:
    """A Prometheus rule file (what the operator would hand Prometheus) from the chart."""
    path = workdir / "duotone-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups(values, workdir)}, sort_keys=False))
    return path


@functools.cache
def monitoring_crd(name: str) -> Path:
    """A prometheus-operator CRD (servicemonitors, prometheusrules) from its Go module."""
    result = subprocess.run(
        [str(INSTALL_TOOLS), "--print-monitoring-crds"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"prometheus-operator CRDs not available (run `make tools`): {result.stderr}")
    path = Path(result.stdout.strip()) / f"monitoring.coreos.com_{name}.yaml"
    assert path.is_file(), path
    return path
