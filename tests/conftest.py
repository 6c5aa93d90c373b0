"""Shared pytest configuration: markers by folder, and the fixture plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

# The real control plane (`cluster`, `namespace`) and the operator under its RBAC.
pytest_plugins = ["tests.support.cluster", "tests.support.operator"]

_MARKERS = {"unit": "unit", "integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/unit/ are `unit`, tests/integration/ `integration`, tests/e2e/ `e2e`."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in _MARKERS:
            item.add_marker(getattr(pytest.mark, _MARKERS[folder]))
