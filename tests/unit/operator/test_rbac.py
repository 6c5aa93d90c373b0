"""The operator's RBAC rules are least privilege (the e2e tests prove they are enough)."""

from __future__ import annotations

from typing import Any

import yaml

from tests.support.manifests import ROOT

FILES = ROOT / "charts" / "duotone" / "files"
RULES: list[dict[str, Any]] = yaml.safe_load((FILES / "operator-rbac-rules.yaml").read_text())
SECRET_RULES: list[dict[str, Any]] = yaml.safe_load(
    (FILES / "operator-secret-rules.yaml").read_text()
)
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def _grants(resource: str, rules: list[dict[str, Any]] = RULES) -> set[str]:
    return {v for r in rules if resource in r["resources"] for v in r["verbs"]}


def test_no_wildcards_and_no_privilege_verbs() -> None:
    for rule in RULES + SECRET_RULES:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_the_cluster_wide_rules_read_no_secret() -> None:
    assert _grants("secrets") == set()
    assert _grants("persistentvolumeclaims") == {"get"}


def test_the_secret_rules_grant_only_get_on_secrets() -> None:
    """The rules a namespaced install adds to each watched namespace's Role."""
    assert SECRET_RULES == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]


def test_children_can_be_applied_and_deleted_but_pods_are_not_touched() -> None:
    for resource in (
        "deployments",
        "services",
        "configmaps",
        "poddisruptionbudgets",
        "networkpolicies",
    ):
        assert {"get", "list", "create", "patch", "delete"} <= _grants(resource), resource
    assert _grants("pods") == set()
    assert _grants("imagemodeldeployments") & WRITE_VERBS == {"patch"}


def test_the_autoscaler_writes_replicas_only_through_scale() -> None:
    assert _grants("deployments/scale") == {"patch"}
    assert _grants("endpointslices") & WRITE_VERBS == set()
