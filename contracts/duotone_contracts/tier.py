"""The tier document: what one tier pod serves, from the operator to the runtime.

The operator writes it into the tier's ConfigMap as `tier.json`; the runtime launcher reads it
from the mounted file and hands the same text to its Triton model. It is
`{"name": "efficient" | "flagship", "spec": <TierSpec, camelCase, defaults applied>}`, written
only by `TierDocument.to_json` and read only by `parse_tier_document` (pure).

The pod's CPU reaches the runtime through the downward API, in the environment variables named
here: the operator renders them, the runtime sizes its thread pools from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from duotone_contracts.api.v1alpha1 import TIER_NAMES, FlagshipTierSpec, TierName, TierSpec

TIER_DOCUMENT_FILE: Final = "tier.json"
"""The tier ConfigMap's key, and the file name where the pod mounts it."""

CPU_REQUEST_MILLICORES_ENV: Final = "DUOTONE_CPU_REQUEST_MILLICORES"
"""The runtime container's `requests.cpu` in millicores (downward API, divisor 1m)."""
CPU_LIMIT_MILLICORES_ENV: Final = "DUOTONE_CPU_LIMIT_MILLICORES"
"""The runtime container's `limits.cpu` in millicores; the node's allocatable CPU when the
container sets no limit (downward API)."""


class TierDocumentError(ValueError):
    """The tier document or an override is not usable; the message says which part."""


@dataclass(frozen=True)
class TierDocument:
    """The tier one pod serves, with the operator's spec (defaults already applied)."""

    name: TierName
    spec: TierSpec

    def document(self) -> dict[str, Any]:
        """The JSON value: `{"name": ..., "spec": <camelCase spec>}`."""
        return {"name": self.name, "spec": self.spec.model_dump(mode="json")}

    def to_json(self) -> str:
        """The document's text: sorted keys, two-space indent, a final newline."""
        return json.dumps(self.document(), indent=2, sort_keys=True) + "\n"


def tier_name(value: object) -> TierName:
    """`value` as a tier name; TierDocumentError naming the field otherwise."""
    for name in TIER_NAMES:
        if value == name:
            return name
    raise TierDocumentError(f"name: must be one of {', '.join(TIER_NAMES)}, got {value!r}")


def tier_spec(name: TierName, spec: object) -> TierSpec:
    """`spec` (a JSON value) validated as the spec of tier `name`, with that tier's defaults."""
    model = FlagshipTierSpec if name == "flagship" else TierSpec
    try:
        return model.model_validate_json(json.dumps(spec))
    except ValueError as error:
        raise TierDocumentError(f"spec: not a valid {name} TierSpec: {error}") from error


def parse_tier_document(text: str) -> TierDocument:
    """Parse a tier document's text."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise TierDocumentError(f"tier document is not JSON: {error}") from error
    if not isinstance(document, dict) or set(document) - {"name", "spec"}:
        raise TierDocumentError('tier document must be an object with keys "name" and "spec"')
    name = tier_name(document.get("name"))
    return TierDocument(name=name, spec=tier_spec(name, document.get("spec")))
