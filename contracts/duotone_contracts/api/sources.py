"""Model sources: where a tier's diffusers pipeline comes from.

pvc://<claim>/<path>          a PersistentVolumeClaim, mounted read-only
hf://<org>/<name>[@<rev>]     a Hugging Face repository, pre-pulled into the cache (offline)
file:///<absolute path>       a directory already inside the image or node
builtin://tiny                a tiny random-weight pipeline the runtime builds (tests, demo)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# One pattern for the API server (CEL `matches`, RE2) and for Python: no backslashes, no
# look-arounds, so both engines read it the same way.
MODEL_SOURCE_PATTERN = (
    "^("
    "pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[-A-Za-z0-9_.]+)*"
    "|hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*(@[-A-Za-z0-9_.]+)?"
    "|file:///[-A-Za-z0-9_./]+"
    "|builtin://tiny"
    ")$"
)
MODEL_SOURCE_FORMS = (
    "pvc://<claim>/<path>, hf://<org>/<name>[@<revision>], file:///<path> or builtin://tiny"
)

SourceKind = Literal["pvc", "hf", "file", "builtin"]


@dataclass(frozen=True)
class ModelSource:
    """A parsed model source."""

    kind: SourceKind
    location: str
    """PVC claim name, Hugging Face repo id, absolute path, or builtin name."""
    path: str = ""
    """Path inside the claim (pvc only), without a leading slash."""
    revision: str = ""
    """Hugging Face revision (hf only); empty means the cache's default ref."""


def is_valid_model_source(source: str) -> bool:
    """Whether `source` has one of the supported forms and no `..` segment."""
    return re.fullmatch(MODEL_SOURCE_PATTERN, source) is not None and ".." not in source


def parse_model_source(source: str) -> ModelSource:
    """Parse a model source string; raises ValueError naming the accepted forms."""
    if not is_valid_model_source(source):
        raise ValueError(f"model source {source!r} must be {MODEL_SOURCE_FORMS}")
    scheme, rest = source.split("://", 1)
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        return ModelSource(kind="pvc", location=claim, path=path)
    if scheme == "hf":
        repo, _, revision = rest.partition("@")
        return ModelSource(kind="hf", location=repo, revision=revision)
    if scheme == "file":
        return ModelSource(kind="file", location=rest)
    return ModelSource(kind="builtin", location=rest)
