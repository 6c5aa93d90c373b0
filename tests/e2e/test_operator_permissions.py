"""The operator's effective permissions, as the API server computes them, against a checked-in
expectation (tests/data/operator-permissions.txt): a rules change that widens them fails here
until the expectation is regenerated and reviewed.

Regenerate after an intended change:
UPDATE_GOLDEN=1 .venv/bin/pytest tests/e2e/test_operator_permissions.py
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

import pytest

from duotone_operator.render import names
from tests.support.cluster import Cluster
from tests.support.manifests import ROOT
from tests.support.operator_process import (
    OPERATOR_ACCOUNT,
    OPERATOR_NAMESPACE,
    OperatorProcess,
    imd_condition,
    wait_ready,
)
from tests.support.presets import small_pair

pytestmark = pytest.mark.cluster

EXPECTED = ROOT / "tests" / "data" / "operator-permissions.txt"
HEADER = (
    "# `kubectl auth can-i --list` of the operator's ServiceAccount in a fresh namespace, less\n"
    "# what any ServiceAccount may do there; one row per resource, sorted.\n"
    "# Regenerate: UPDATE_GOLDEN=1 .venv/bin/pytest tests/e2e/test_operator_permissions.py\n"
)
# Resources   Non-Resource URLs   Resource Names   Verbs  (the resource is empty for URLs)
ROW = re.compile(r"^(\S*)\s+(\[[^\]]*\])\s+(\[[^\]]*\])\s+\[([^\]]*)\]$")


def _permissions(cluster: Cluster, user: str, namespace: str) -> set[str]:
    """`kubectl auth can-i --list` for `user` in `namespace`, one normalised row per entry
    (verbs sorted, so the order of rules in a file does not matter)."""
    listed = cluster.kubectl(
        "auth", "can-i", "--list", f"--as={user}", f"--namespace={namespace}"
    ).stdout.splitlines()
    assert listed, f"nothing listed for {user}"
    assert listed[0].split()[0] == "Resources", listed
    rows = set()
    for line in listed[1:]:
        match = ROW.match(line.rstrip())
        assert match, f"unexpected row: {line!r}"
        resource, urls, names, verbs = match.groups()
        rows.add(f"{resource or '-'} {urls} {names} [{' '.join(sorted(verbs.split()))}]")
    return rows


def _account(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def test_effective_permissions_match_the_expectation_and_read_no_secret(
    cluster: Cluster, operator_kubeconfig: Path, namespace: str
) -> None:
    operator = _permissions(cluster, _account(OPERATOR_NAMESPACE, OPERATOR_ACCOUNT), namespace)
    # What every ServiceAccount gets (discovery, self reviews): a fresh account with no binding.
    baseline = _permissions(cluster, _account(namespace, "default"), namespace)
    assert baseline, "the baseline account's permissions could not be listed"
    actual = HEADER + "".join(f"{row}\n" for row in sorted(operator - baseline))
    if os.environ.get("UPDATE_GOLDEN") == "1":
        EXPECTED.write_text(actual)
    assert EXPECTED.exists(), f"missing {EXPECTED}; run UPDATE_GOLDEN=1 (see this module)"
    expected = EXPECTED.read_text()
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=str(EXPECTED.relative_to(ROOT)),
            tofile="effective permissions",
        )
    )
    assert actual == expected, (
        f"the operator's permissions changed:\n{diff}\n"
        "Review the change; if intended, regenerate with UPDATE_GOLDEN=1 (see this module)."
    )
    assert not [row for row in operator if row.split()[0].split(".")[0] == "secrets"], actual


def test_without_secret_reads_a_missing_secret_is_not_reported(
    cluster: Cluster, namespace: str, run_operator: Any
) -> None:
    """Cluster-wide, the operator may not read Secrets: it reconciles an IMD whose API-key
    Secret it cannot see (the pods show a missing one) instead of holding it as SecretNotFound.
    kwok's pods mount nothing, so here the IMD even becomes Ready."""
    operator: OperatorProcess = run_operator(namespace)
    manifest = small_pair("sd").router(apiKeysSecretRef={"name": "sd-api-keys"}).build()
    cluster.create(manifest, namespace)
    wait_ready(cluster, namespace, "sd", operator, timeout_s=60)
    assert imd_condition(cluster, namespace, "sd")["reason"] != "SecretNotFound"
    router = cluster.get_json("deployment", names.router_name("sd"), f"--namespace={namespace}")
    volumes = router["spec"]["template"]["spec"]["volumes"]
    assert "sd-api-keys" in [v.get("secret", {}).get("secretName") for v in volumes], volumes
