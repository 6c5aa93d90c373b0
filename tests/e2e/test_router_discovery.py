"""The router's EndpointSlice discovery against the real API server, with only the RBAC the
operator renders for it (a Role and RoleBinding; tests/unit/test_render.py pins their rules)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from duotone_contracts.api.validation import parse_imd
from duotone_operator.render.router import render_router_rbac
from duotone_router.discovery import Addresses, EndpointSliceDiscovery, KubeAccess
from tests.support.builders import imd
from tests.support.cluster import Cluster


def _slice(name: str, service: str, endpoints: list[tuple[str, bool]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "grpc", "port": 8001, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in endpoints
        ],
    }


def test_router_discovers_ready_tier_pods_from_endpointslices(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    manifest = imd("sd").tier("efficient").build()
    manifest["metadata"].update(namespace=namespace, uid="00000000-0000-0000-0000-000000000001")
    cluster.create(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sd-router"}}, namespace
    )
    for rbac in render_router_rbac(parse_imd(manifest)):
        rbac["metadata"].pop("ownerReferences")  # no live IMD owns them in this test
        cluster.create(rbac, namespace)
    cluster.create(
        _slice("sd-efficient-a", "sd-efficient", [("10.1.0.1", True), ("10.1.0.2", False)]),
        namespace,
    )
    cluster.create(_slice("other-a", "other", [("10.9.0.1", True)]), namespace)

    token = tmp_path / "token"
    token.write_text(cluster.service_account_token(namespace, "sd-router"))
    configuration = cluster.api_client().configuration
    access = KubeAccess(configuration.host, token, Path(configuration.ssl_ca_cert))
    seen: list[Addresses] = []

    async def scenario() -> None:
        discovery = EndpointSliceDiscovery(access, namespace, retry_s=0.2)
        task = asyncio.create_task(discovery.run({"sd-efficient": "efficient"}, seen.append))

        async def reaches(expected: tuple[str, ...]) -> None:
            while not seen or seen[-1].get("efficient") != expected:
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)

        try:
            await asyncio.wait_for(reaches(("10.1.0.1:8001",)), 30)
            # A new pod becomes ready: the watch delivers it without a re-list.
            await asyncio.to_thread(
                cluster.kubectl,
                "patch",
                "endpointslice",
                "sd-efficient-a",
                f"--namespace={namespace}",
                "--type=json",
                "--patch="
                '[{"op": "replace", "path": "/endpoints/1/conditions/ready", "value": true}]',
            )
            await asyncio.wait_for(reaches(("10.1.0.1:8001", "10.1.0.2:8001")), 30)
            await asyncio.to_thread(
                cluster.kubectl,
                "delete",
                "endpointslice",
                "sd-efficient-a",
                f"--namespace={namespace}",
            )
            await asyncio.wait_for(reaches(()), 30)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    assert all(set(a) == {"efficient"} for a in seen)  # the other Service never shows up
