"""Loading the example manifests and the invalid-manifest cases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "examples"
INVALID_DIR = ROOT / "tests" / "data" / "invalid"
CRD_PATH = ROOT / "crds" / "duotone.io_imagemodeldeployments.yaml"


@dataclass(frozen=True)
class InvalidCase:
    """A manifest that must be rejected, with the field and message the rejection names.

    The file's leading comments state them:
        # field: spec.tiers.efficient.replicas.min
        # message: replicas.min must be less than or equal to replicas.max
    """

    path: Path
    field: str
    message: str
    manifest: dict[str, Any]

    @property
    def id(self) -> str:
        return self.path.stem


def _header(text: str, key: str, path: Path) -> str:
    prefix = f"# {key}:"
    for line in text.splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise ValueError(f"{path}: missing '{prefix}' header line")


def load_invalid_cases() -> list[InvalidCase]:
    """Every file in tests/data/invalid/, sorted by name."""
    cases = []
    for path in sorted(INVALID_DIR.glob("*.yaml")):
        text = path.read_text()
        cases.append(
            InvalidCase(
                path=path,
                field=_header(text, "field", path),
                message=_header(text, "message", path),
                manifest=yaml.safe_load(text),
            )
        )
    return cases


def load_examples() -> list[tuple[Path, dict[str, Any]]]:
    """Every ImageModelDeployment document in examples/, with its file."""
    found = []
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ImageModelDeployment":
                found.append((path, doc))
    return found


def load_crd() -> dict[str, Any]:
    """The generated CRD from crds/."""
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd
