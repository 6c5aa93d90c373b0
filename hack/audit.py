#!/usr/bin/env python3
"""Score what Duotone puts in a cluster with kube-score; fail on any CRITICAL finding.

Scored, each as one set of objects:
  chart (default values)      helm template charts/duotone
  chart (permissive values)   ... -f charts/duotone/ci/permissive-values.yaml
  <example> children          what the operator renders for each examples/*.yaml
  two-tier children, no NetworkPolicies   the operator as the permissive chart runs it

A finding Duotone deliberately does not follow is skipped on its own object by kube-score's
`kube-score/ignore` annotation, with the reason beside the code that adds it
(duotone_operator/render/placement.py, the chart's _helpers.tpl); nothing is skipped here.

python hack/audit.py                  # the table; exit 1 on a CRITICAL (`make verify`)
python hack/audit.py --also FILE...   # score these manifests too (one set each)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from duotone_contracts.api import parse_imd
from duotone_operator.render.children import render_children
from duotone_operator.render.objects import RenderSettings

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "duotone"
PERMISSIVE_VALUES = CHART / "ci" / "permissive-values.yaml"
EXAMPLES = ROOT / "examples"
NAMESPACE = "images"
FINDING = re.compile(r"^\[(CRITICAL|WARNING)\] (.*)$")


@dataclass(frozen=True)
class Scored:
    """kube-score's findings for one set of objects."""

    name: str
    critical: tuple[str, ...]
    warning: tuple[str, ...]


def _tool(flag: str, name: str) -> str:
    path = subprocess.run(
        [str(ROOT / "hack" / "install-tools.sh"), flag], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not path:
        sys.exit(f"audit: {name} is not built; run hack/install-tools.sh --audit (make verify)")
    return path


def deployed(manifest: dict[str, Any]) -> Any:
    """An example as the API server hands it to the operator (namespace and uid set)."""
    metadata = {**manifest["metadata"], "namespace": NAMESPACE, "generation": 1}
    metadata["uid"] = "00000000-0000-4000-8000-000000000000"
    return parse_imd({**manifest, "metadata": metadata})


def children_yaml(example: Path, settings: RenderSettings) -> str:
    manifest = yaml.safe_load(example.read_text())
    return yaml.safe_dump_all(render_children(deployed(manifest), settings), sort_keys=False)


def chart_yaml(helm: str, *values: Path) -> str:
    flags = [arg for path in values for arg in ("-f", str(path))]
    return subprocess.run(
        [helm, "template", "duotone", str(CHART), "--namespace", "duotone-system", *flags],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def score(kube_score: str, name: str, manifests: str) -> Scored:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        handle.write(manifests)
        handle.flush()
        run = subprocess.run(
            [kube_score, "score", "--output-format", "ci", handle.name],
            check=False,
            capture_output=True,
            text=True,
        )
    # kube-score exits 1 when it finds a CRITICAL; anything else non-zero is its own failure.
    if run.returncode not in (0, 1):
        sys.exit(f"audit: kube-score failed on {name}:\n{run.stderr}")
    found: dict[str, list[str]] = {"CRITICAL": [], "WARNING": []}
    for line in run.stdout.splitlines():
        match = FINDING.match(line)
        if match:
            found[match.group(1)].append(match.group(2))
    return Scored(name, tuple(found["CRITICAL"]), tuple(found["WARNING"]))


def audit(also: Sequence[Path]) -> list[Scored]:
    helm = _tool("--print-helm", "helm")
    kube_score = _tool("--print-kube-score", "kube-score")
    sets = [
        ("chart (default values)", chart_yaml(helm)),
        ("chart (permissive values)", chart_yaml(helm, PERMISSIVE_VALUES)),
    ]
    for example in sorted(EXAMPLES.glob("*.yaml")):
        sets.append((f"{example.stem} children", children_yaml(example, RenderSettings())))
    sets.append(
        (
            "two-tier children, no NetworkPolicies",
            children_yaml(EXAMPLES / "two-tier.yaml", RenderSettings(network_policies=False)),
        )
    )
    sets += [(str(path), path.read_text()) for path in also]
    return [score(kube_score, name, manifests) for name, manifests in sets]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--also", type=Path, nargs="*", default=[], help="more manifests")
    args = parser.parse_args(argv)
    results = audit(args.also)
    width = max(len(r.name) for r in results)
    print(f"{'objects scored by kube-score':<{width}}  CRITICAL  WARNING")
    for r in results:
        print(f"{r.name:<{width}}  {len(r.critical):>8}  {len(r.warning):>7}")
    print(
        f"{'total':<{width}}  {sum(len(r.critical) for r in results):>8}  "
        f"{sum(len(r.warning) for r in results):>7}"
    )
    for r in results:
        for line in r.warning:
            print(f"  WARNING   {r.name}: {line}")
    failed = [(r.name, line) for r in results for line in r.critical]
    for name, line in failed:
        print(f"  CRITICAL  {name}: {line}")
    if failed:
        print(
            f"audit: {len(failed)} CRITICAL finding(s); fix them, or skip one on its object "
            "with a kube-score/ignore annotation and the reason (docs/helm.md)"
        )
        return 1
    print("audit: no CRITICAL finding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
