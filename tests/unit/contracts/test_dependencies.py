"""The contract package loads nothing but the standard library and pydantic."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import duotone_contracts

pytestmark = pytest.mark.unit

PYDANTIC = {
    "pydantic",
    "pydantic_core",
    "typing_extensions",
    "annotated_types",
    "typing_inspection",
}
"""pydantic and the packages it imports itself."""


def test_importing_every_contract_module_loads_only_pydantic() -> None:
    modules = [
        name
        for _, name, _ in pkgutil.walk_packages(duotone_contracts.__path__, "duotone_contracts.")
    ]
    assert "duotone_contracts.routing_table" in modules
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    loaded = set(out.stdout.split())
    foreign = loaded - set(sys.stdlib_module_names) - PYDANTIC - {"duotone_contracts"}
    assert not {m for m in foreign if not m.startswith("_")}, foreign
