"""Shared pytest configuration: markers by folder, and the fixture plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

# The real control plane (`cluster`, `namespace`), the operator under its RBAC, and the test
# bed with its real node (`real_cluster`, `real_namespace`).
pytest_plugins = [
    "tests.support.cluster",
    "tests.support.operator_process",
    "tests.support.real_node",
]

_MARKERS = {"unit": "unit", "integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/unit/ are `unit`, tests/integration/ `integration`, tests/e2e/ `e2e`
    (subfolders included, e.g. tests/integration/runtime/)."""
    root = Path(__file__).parent
    for item in items:
        parts = Path(str(item.fspath)).relative_to(root).parts
        if parts and parts[0] in _MARKERS:
            item.add_marker(getattr(pytest.mark, _MARKERS[parts[0]]))
