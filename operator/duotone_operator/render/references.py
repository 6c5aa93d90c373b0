"""What an IMD needs to exist in the cluster, and the problems when it does not (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from duotone_contracts.api.sources import parse_model_source
from duotone_contracts.api.v1alpha1 import ImageModelDeployment
from duotone_operator.render.status import Problem


@dataclass(frozen=True)
class References:
    """Objects the IMD's pods will need, by name, in the IMD's namespace (and node resources)."""

    claims: frozenset[str] = field(default_factory=frozenset)
    secrets: frozenset[str] = field(default_factory=frozenset)
    gpu_resources: frozenset[str] = field(default_factory=frozenset)


def required_references(imd: ImageModelDeployment) -> References:
    claims: set[str] = set()
    secrets: set[str] = set()
    gpus: set[str] = set()
    for spec in imd.spec.tiers.present().values():
        source = parse_model_source(spec.model.source)
        if source.kind == "pvc":
            claims.add(source.location)
        if spec.model.cache_claim_name is not None:
            claims.add(spec.model.cache_claim_name)
        if spec.model.token_secret_ref is not None:
            secrets.add(spec.model.token_secret_ref.name)
        if spec.resources.gpus > 0:
            gpus.add(spec.resources.gpu_resource_name)
    if imd.spec.router.api_keys_secret_ref is not None:
        secrets.add(imd.spec.router.api_keys_secret_ref.name)
    return References(frozenset(claims), frozenset(secrets), frozenset(gpus))


PROBLEM_REASONS = frozenset(
    {"PersistentVolumeClaimNotFound", "SecretNotFound", "GPUResourceUnavailable"}
)
"""Every reason `problems` gives: a Ready condition with one of them is a reconcile's verdict
that the spec cannot work yet."""


def carried_problems(status: Mapping[str, Any] | None) -> tuple[Problem, ...]:
    """The problem the last reconcile reported in `status`, if any (to keep it in a refresh)."""
    for entry in (status or {}).get("conditions") or []:
        problem = entry.get("reason") in PROBLEM_REASONS and entry.get("status") == "False"
        if entry.get("type") == "Ready" and problem:
            return (Problem(str(entry["reason"]), str(entry.get("message") or "")),)
    return ()


def problems(missing: References, namespace: str) -> list[Problem]:
    """One Problem per missing reference, most specific first, each saying how to fix it."""
    found = [
        Problem(
            "PersistentVolumeClaimNotFound",
            f"PersistentVolumeClaim {name!r} not found in namespace {namespace!r}",
        )
        for name in sorted(missing.claims)
    ]
    found += [
        Problem("SecretNotFound", f"Secret {name!r} not found in namespace {namespace!r}")
        for name in sorted(missing.secrets)
    ]
    found += [
        Problem(
            "GPUResourceUnavailable",
            f"no node offers the resource {name!r}; check resources.gpuResourceName",
        )
        for name in sorted(missing.gpu_resources)
    ]
    return found
