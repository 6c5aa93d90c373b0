"""Where each tier's pods are: EndpointSlices in a cluster, a static file locally.

Both sources call `on_change(tier -> gRPC addresses)` with the full picture whenever it
changes. The EndpointSlice source lists and then watches the slices of the tier Services
(label `kubernetes.io/service-name`) with the router's ServiceAccount token, re-listing after
any watch error; it needs only get/list/watch on endpointslices in its namespace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from duotone_contracts.api.v1alpha1 import TierName
from duotone_contracts.services import SERVICE_NAME_LABEL, TIER_GRPC, addresses_from_slices
from duotone_router.config import ConfigError, parse_static_backends

log = logging.getLogger("duotone.router.discovery")

Addresses = dict[TierName, tuple[str, ...]]
OnChange = Callable[[Addresses], None]
IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class Discovery(Protocol):
    """A source of backend addresses."""

    async def run(self, services: Mapping[str, TierName], on_change: OnChange) -> None:
        """Report addresses until cancelled; `services` maps Service name -> tier."""


@dataclass
class StaticFileDiscovery:
    """A JSON file `{"tiers": {"efficient": ["127.0.0.1:8001"]}}`, re-read when it changes."""

    path: Path
    poll_s: float = 0.5

    async def run(self, services: Mapping[str, TierName], on_change: OnChange) -> None:  # noqa: ARG002 - the file names tiers, not Services
        last: str | None = None
        while True:
            try:
                text = self.path.read_text()
            except OSError as error:
                log.warning("cannot read backends file %s: %s", self.path, error)
                text = last or ""
            if text != last:
                try:
                    on_change(parse_static_backends(text))
                    last = text
                except ConfigError as error:
                    log.warning("%s; keeping the previous backends", error)
            await asyncio.sleep(self.poll_s)


@dataclass
class KubeAccess:
    """How to reach the API server: URL, a token file (re-read: tokens rotate) and a CA."""

    url: str
    token_file: Path
    ca_file: Path | None

    @classmethod
    def in_cluster(cls) -> KubeAccess:
        import os  # noqa: PLC0415 - only inside a pod

        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", IN_CLUSTER_DIR / "token", IN_CLUSTER_DIR / "ca.crt")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token_file.read_text().strip()}"}

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


@dataclass
class EndpointSliceDiscovery:
    """List, then watch, the tier Services' EndpointSlices in one namespace."""

    access: KubeAccess
    namespace: str
    retry_s: float = 2.0
    watch_timeout_s: int = 300

    def _url(self) -> str:
        base = f"{self.access.url}/apis/discovery.k8s.io/v1/namespaces/{self.namespace}"
        return f"{base}/endpointslices"

    async def run(self, services: Mapping[str, TierName], on_change: OnChange) -> None:
        connector = aiohttp.TCPConnector(ssl=self.access.ssl_context())
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                try:
                    await self._list_and_watch(session, services, on_change)
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
                    log.warning("EndpointSlice discovery: %s; retrying", error)
                await asyncio.sleep(self.retry_s)

    async def _list_and_watch(
        self,
        session: aiohttp.ClientSession,
        services: Mapping[str, TierName],
        on_change: OnChange,
    ) -> None:
        url = self._url()
        selector = f"{SERVICE_NAME_LABEL} in ({','.join(sorted(services))})"
        params = {"labelSelector": selector}
        async with session.get(url, params=params, headers=self.access.headers()) as response:
            if response.status != 200:
                raise ValueError(f"list endpointslices: {response.status} {await response.text()}")
            listed = await response.json()
        slices: dict[str, Mapping[str, Any]] = {
            s["metadata"]["name"]: s for s in listed.get("items") or []
        }
        on_change(addresses_from_slices(slices.values(), services, TIER_GRPC.name))
        version = listed["metadata"]["resourceVersion"]
        params |= {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": version,
            "timeoutSeconds": str(self.watch_timeout_s),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.watch_timeout_s + 30)
        headers = self.access.headers()
        async with session.get(url, params=params, headers=headers, timeout=timeout) as response:
            if response.status != 200:
                raise ValueError(f"watch endpointslices: {response.status}")
            async for line in response.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, item = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise ValueError(f"watch error: {item.get('message')}")
                if kind == "BOOKMARK":
                    continue
                name = item["metadata"]["name"]
                if kind == "DELETED":
                    slices.pop(name, None)
                else:
                    slices[name] = item
                on_change(addresses_from_slices(slices.values(), services, TIER_GRPC.name))
