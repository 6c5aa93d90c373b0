"""Fluent builders for test manifests.

    imd("sd").tier("flagship", min=0, max=4).slo(p50_ms=6000).build()

Settings after `.tier(...)` apply to that tier; the result is a plain manifest dict, exactly
what `kubectl apply` would send.
"""

from __future__ import annotations

import copy
from typing import Any, Self

from duotone_contracts.api.v1alpha1 import RequestDefaults, RequestLimits, SLOSpec
from duotone_contracts.routing_table import TierRoute


class IMDBuilder:
    """Builds an ImageModelDeployment manifest."""

    def __init__(self, name: str, image: str = "duotone-runtime:dev") -> None:
        self._name = name
        self._namespace: str | None = None
        self._spec: dict[str, Any] = {"runtime": {"image": image}, "tiers": {}}
        self._tier: str | None = None

    def namespace(self, namespace: str) -> Self:
        """Put the manifest in `namespace` (metadata.namespace)."""
        self._namespace = namespace
        return self

    def tier(
        self,
        name: str,
        *,
        source: str = "builtin://tiny",
        min: int | None = None,  # noqa: A002 - mirrors the YAML field
        max: int | None = None,  # noqa: A002 - mirrors the YAML field
        gpus: int | None = None,
    ) -> Self:
        """Add (or select) a tier; later calls configure it."""
        tier = self._spec["tiers"].setdefault(name, {"model": {"source": source}})
        tier["model"]["source"] = source
        if min is not None:
            tier.setdefault("replicas", {})["min"] = min
        if max is not None:
            tier.setdefault("replicas", {})["max"] = max
        if gpus is not None:
            tier.setdefault("resources", {})["gpus"] = gpus
        self._tier = name
        return self

    def _current(self) -> dict[str, Any]:
        if self._tier is None:
            raise ValueError("call .tier(...) first")
        tier: dict[str, Any] = self._spec["tiers"][self._tier]
        return tier

    def slo(self, *, p50_ms: int) -> Self:
        self._current()["slo"] = {"p50LatencyMs": p50_ms}
        return self

    def defaults(self, **fields: Any) -> Self:
        self._current().setdefault("defaults", {}).update(fields)
        return self

    def limits(self, **fields: Any) -> Self:
        self._current().setdefault("limits", {}).update(fields)
        return self

    def batching(self, **fields: Any) -> Self:
        self._current().setdefault("batching", {}).update(fields)
        return self

    def traffic(self, **fields: Any) -> Self:
        self._spec.setdefault("traffic", {}).update(fields)
        return self

    def resources(self, **fields: Any) -> Self:
        self._current().setdefault("resources", {}).update(fields)
        return self

    def router(self, **fields: Any) -> Self:
        self._spec.setdefault("router", {}).update(fields)
        return self

    def autoscaling(self, **fields: Any) -> Self:
        self._spec.setdefault("autoscaling", {}).update(fields)
        return self

    def build(self) -> dict[str, Any]:
        metadata = {"name": self._name}
        if self._namespace is not None:
            metadata["namespace"] = self._namespace
        return {
            "apiVersion": "duotone.io/v1alpha1",
            "kind": "ImageModelDeployment",
            "metadata": metadata,
            "spec": copy.deepcopy(self._spec),
        }


def imd(name: str, image: str = "duotone-runtime:dev") -> IMDBuilder:
    """Start building an ImageModelDeployment manifest."""
    return IMDBuilder(name, image)


def small_tier_route() -> TierRoute:
    """A routing-table entry for the efficient tier of IMD `sd`: defaults 2 steps at 64x64,
    limits 4 steps, 256x256, 2 images (the router's unit tests)."""
    return TierRoute(
        service="sd-efficient",
        host="sd-efficient.ns.svc",
        grpc_port=8001,
        http_port=8000,
        metrics_port=8002,
        defaults=RequestDefaults(steps=2, width=64, height=64),
        limits=RequestLimits(max_steps=4, max_width=256, max_height=256, max_images_per_request=2),
        slo=SLOSpec(),
        request_timeout_ms=10000,
        max_queue_size=16,
    )
