"""How the programs find each other: Service ports, and reading their EndpointSlices (pure).

The operator renders the tier and router Services with these ports; the router finds its
tiers' gRPC ports in their EndpointSlices, and the autoscaler's direct metric source finds the
pods' and the routers' metrics ports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
K = TypeVar("K")


@dataclass(frozen=True)
class ServicePort:
    """A named port of a Service and of the container behind it."""

    name: str
    number: int


TIER_HTTP: Final = ServicePort("http", 8000)
"""Triton's HTTP API (KServe v2) behind the runtime's drain gate: probes, ad-hoc clients."""
TIER_GRPC: Final = ServicePort("grpc", 8001)
"""Triton's gRPC API behind the drain gate: what the router calls."""
TIER_METRICS: Final = ServicePort("metrics", 8002)
"""Triton's Prometheus metrics, with the runtime's own."""
ROUTER_HTTP: Final = ServicePort("http", 8080)
"""The router's OpenAI-compatible endpoint and its probes."""
ROUTER_METRICS: Final = ServicePort("metrics", 9090)
"""The router's Prometheus metrics: a port of its own, so the NetworkPolicy can open the
endpoint to clients and the metrics (which name API keys) only to scrapers."""


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def addresses_from_slices(
    slices: Iterable[Mapping[str, Any]], services: Mapping[str, K], port_name: str
) -> dict[K, tuple[str, ...]]:
    """Ready endpoints' `host:port` of the port named `port_name`, per key of `services`
    (Service name -> key). Unready or terminating pods are left out; `ready` missing counts as
    ready, as the EndpointSlice API says."""
    found: dict[K, list[str]] = {key: [] for key in services.values()}
    for item in slices:
        service = (item.get("metadata", {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not isinstance(service, str) or service not in services:
            continue
        key = services[service]
        ports = [p for p in item.get("ports") or [] if p.get("name") == port_name]
        if not ports or ports[0].get("port") is None:
            continue
        port = int(ports[0]["port"])
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            found[key] += [_address(ip, port) for ip in endpoint.get("addresses") or []]
    return {key: tuple(sorted(set(addrs))) for key, addrs in found.items()}
