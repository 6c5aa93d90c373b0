"""Each program installs alone (a real pip install into a clean venv) with only what it runs.

The contracts pull pydantic only; the router image's packages pull no torch, diffusers or
Kubernetes client and no other Duotone program (router/Dockerfile installs exactly these).
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

from tests.support.manifests import ROOT

ML = ("torch", "diffusers", "transformers")
HEAVY = (*ML, "kopf", "kubernetes", "tritonclient")


def _venv_with(tmp_path: Path, *packages: str) -> tuple[Path, set[str]]:
    """A fresh venv with the repository's `packages` folders installed; its python and the
    distributions it holds."""
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", *(str(ROOT / p) for p in packages)],
        check=True,
        timeout=600,
    )
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.lower()
    return python, {line.split("==")[0] for line in listed.splitlines()}


def test_the_contracts_install_alone_and_pull_pydantic_only(tmp_path: Path) -> None:
    python, installed = _venv_with(tmp_path, "contracts")
    assert not installed & set(HEAVY), f"the contracts pulled {installed & set(HEAVY)}"
    assert {"duotone-contracts", "pydantic"} <= installed
    probe = "import duotone_contracts.api as api; print(api.parse_imd.__name__)"
    out = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "parse_imd"


def test_the_router_installs_without_torch_or_the_other_programs(tmp_path: Path) -> None:
    python, installed = _venv_with(tmp_path, "contracts", "router")
    assert not installed & {*ML, "kopf", "kubernetes"}, installed
    assert not installed & {"duotone-operator", "duotone-runtime", "duotone-testbed"}
    assert {"duotone-router", "tritonclient", "aiohttp"} <= installed
    no_torch = subprocess.run(
        [python, "-c", "import torch"], check=False, capture_output=True, text=True
    )
    assert no_torch.returncode != 0
    assert "No module named 'torch'" in no_torch.stderr
    router = python.parent / "duotone-router"
    assert (
        "--config"
        in subprocess.run([router, "--help"], check=True, capture_output=True, text=True).stdout
    )
    probe = (
        "import sys, duotone_router.app, duotone_router.cli; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules and m != 'tritonclient'))"
    )
    out = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""


def test_api_import_loads_no_heavy_module_in_this_environment() -> None:
    """Even with everything installed, importing the API pulls none of the heavy stacks."""
    probe = (
        "import sys, duotone_contracts.api; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""
