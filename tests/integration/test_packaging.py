"""The operator core installs without torch, Kopf or the Kubernetes client (a real pip install)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

from tests.support.manifests import ROOT

HEAVY = ("torch", "diffusers", "transformers", "kopf", "kubernetes", "tritonclient")


def test_plain_install_pulls_no_torch_and_the_api_imports(tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    # Same package index and wheel settings as the developer's pip; no cache writes into $HOME.
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-cache-dir", "-e", str(ROOT)],
        check=True,
        timeout=300,
    )
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.lower()
    installed = {line.split("==")[0] for line in listed.splitlines()}
    assert not installed & set(HEAVY), f"base install pulled {installed & set(HEAVY)}"
    probe = (
        "import sys, duotone_operator.api as api; "
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
        "assert not heavy, heavy; "
        "print(api.parse_imd.__name__)"
    )
    out = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "parse_imd"


def test_api_import_loads_no_heavy_module_in_this_environment() -> None:
    """Even with everything installed, importing the API pulls none of the heavy stacks."""
    probe = (
        "import sys, duotone_operator.api; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""
