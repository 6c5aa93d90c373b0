"""The real API server fills in defaults exactly as the pydantic models do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from duotone_contracts.api import parse_imd
from tests.support.cluster import Cluster
from tests.support.manifests import load_examples

pytestmark = pytest.mark.cluster

EXAMPLES = load_examples()


@pytest.mark.parametrize(("path", "manifest"), EXAMPLES, ids=[p.stem for p, _ in EXAMPLES])
def test_server_defaults_equal_model_defaults(
    cluster: Cluster, namespace: str, crd: None, path: Path, manifest: dict[str, Any]
) -> None:
    stored = cluster.create(manifest, namespace)
    assert stored["spec"] == parse_imd(manifest).spec.model_dump(mode="json", exclude_none=True)
