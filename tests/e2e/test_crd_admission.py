"""The generated CRD is served by a real kube-apiserver, and its CEL rules reject bad specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import REPO_ROOT, Cluster, wait_for
from tests.support.manifests import InvalidCase, load_examples, load_invalid_cases

pytestmark = pytest.mark.cluster

CRD_PATH = REPO_ROOT / "crds" / "duotone.io_imagemodeldeployments.yaml"
CRD_NAME = "imagemodeldeployments.duotone.io"
INVALID_CASES = load_invalid_cases()
EXAMPLES = load_examples()


@pytest.fixture(scope="module")
def imd_crd(cluster: Cluster) -> str:
    """The CRD from crds/, installed and Established (left installed for later tests)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_PATH))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=60s")
    return CRD_NAME


def test_crd_is_accepted_and_established(cluster: Cluster, imd_crd: str) -> None:
    conditions = cluster.kubectl(
        "get", f"crd/{imd_crd}", "--output=jsonpath={.status.conditions[*].type}"
    ).stdout.split()
    assert "Established" in conditions
    assert "NamesAccepted" in conditions
    resources = cluster.kubectl("api-resources", "--api-group=duotone.io", "--output=wide").stdout
    assert "imd" in resources
    assert "ImageModelDeployment" in resources


def test_kubectl_get_imd_works(cluster: Cluster, imd_crd: str, namespace: str) -> None:
    result = cluster.kubectl("get", "imd", "--namespace", namespace)
    assert "No resources found" in result.stdout + result.stderr


def test_kubectl_explain_imd_spec_tiers(cluster: Cluster, imd_crd: str) -> None:
    # The API server publishes a new CRD's OpenAPI schema a few seconds after Established.
    def explain() -> str | None:
        result = cluster.kubectl("explain", "imd.spec.tiers", check=False)
        return result.stdout if result.returncode == 0 else None

    explained = wait_for(explain, timeout_s=60, what="the CRD's OpenAPI schema to be published")
    assert "ImageModelDeployment" in explained
    assert "FIELD: tiers" in explained
    assert "efficient" in explained


def test_there_are_manifests_to_check() -> None:
    # Empty lists would turn the parametrized tests below into silent skips.
    assert INVALID_CASES, "tests/data/invalid/ holds no manifests"
    assert EXAMPLES, "examples/ holds no ImageModelDeployment"


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_invalid_manifest_is_rejected_with_its_stated_message(
    cluster: Cluster, imd_crd: str, namespace: str, case: InvalidCase
) -> None:
    result = cluster.kubectl(
        "create", f"--namespace={namespace}", "--filename=-",
        stdin=yaml.safe_dump(case.manifest), check=False,
    )  # fmt: skip
    assert result.returncode != 0, f"{case.path.name} was accepted:\n{result.stdout}"
    assert case.field in result.stderr, result.stderr
    assert case.message in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("path", "manifest"), EXAMPLES, ids=[f"{p.stem}-{m['metadata']['name']}" for p, m in EXAMPLES]
)
def test_example_manifest_is_accepted(
    cluster: Cluster, imd_crd: str, namespace: str, path: Path, manifest: dict[str, Any]
) -> None:
    # Server-side dry run: defaulting, the structural schema and every CEL rule run; nothing is
    # stored. The example's own namespace, if any, is replaced by the test's.
    manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    cluster.kubectl(
        "create", "--dry-run=server", f"--namespace={namespace}", "--filename=-",
        stdin=yaml.safe_dump(manifest),
    )  # fmt: skip
