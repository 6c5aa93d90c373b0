"""Real runtime processes (tritonserver on CPU serving builtin://tiny) behind a real router.

The stacks are rendered from an ImageModelDeployment exactly as the operator renders its
ConfigMaps; only discovery differs (a backends file instead of EndpointSlices). Every wait
polls with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from duotone_contracts.api.v1alpha1 import TierName
from duotone_contracts.api.validation import parse_imd
from duotone_runtime.launcher import TritonNotFoundError, find_tritonserver
from duotone_testbed.clients import metric_sum, scrape_metrics
from duotone_testbed.stack import LocalStack
from tests.support import presets
from tests.support.builders import IMDBuilder
from tests.support.cluster import wait_for

TIGHT = {
    "maxSteps": 2,
    "maxWidth": 64,
    "maxHeight": 64,
    "maxGuidanceScale": 20.0,
    "maxImagesPerRequest": 1,
    "maxPromptLength": 200,
}
"""Router limits under which every valid request is one cheap 64x64 image (the fuzz tests)."""


def start_stack(
    workdir: Path, builder: IMDBuilder, pods: dict[TierName, int] | None = None
) -> LocalStack:
    try:
        find_tritonserver(None)
    except TritonNotFoundError as error:
        pytest.fail(f"the runtime tests need tritonserver: {error}")
    manifest = builder.build()
    manifest["metadata"]["namespace"] = "local"
    stack = LocalStack.from_imd(
        parse_imd(manifest),
        workdir,
        pods=pods,
        router_args=["--seed=20261122"],
    )
    return stack.start()


def start_efficient_pair(workdir: Path, name: str) -> LocalStack:
    """Two efficient pods of the tiny pipeline behind a router (no flagship, no split)."""
    builder = presets.tiny_pair(name)
    builder._spec["tiers"].pop("flagship")
    builder._spec.pop("traffic")
    return start_stack(workdir, builder, pods={"efficient": 2})


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One efficient and one flagship server and a router, shared by the package's tests."""
    started = start_stack(tmp_path_factory.mktemp("stack"), presets.tiny_pair())
    try:
        yield started
    finally:
        started.stop()


def router_metric(stack: LocalStack, name: str, **labels: str) -> float:
    assert stack.router is not None
    return metric_sum(scrape_metrics(stack.router.metrics_url), name, **labels)


def triton_requests(stack: LocalStack) -> float:
    """Every request any Triton server has seen, succeeded or failed."""
    total = 0.0
    for servers in stack.servers.values():
        for server in servers:
            if server.process is not None and server.process.poll() is None:
                total += server.metric("nv_inference_request_success")
                total += server.metric("nv_inference_request_failure")
    return total


def reconfigure(stack: LocalStack, **changes: Any) -> None:
    """Rewrite router.json (as a ConfigMap update does) and wait until the router reloaded it."""
    assert stack.router is not None
    before = router_metric(stack, "duotone_router_config_reloads_total", result="ok")
    table = json.loads(json.dumps(stack.router.table))
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(table.get(key), dict):
            table[key].update(value)
        else:
            table[key] = value
    stack.router.write_table(table)
    wait_for(
        lambda: router_metric(stack, "duotone_router_config_reloads_total", result="ok") > before,
        timeout_s=15,
        what="the router to reload its routing table",
    )


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]
    started: float
    finished: float

    @property
    def tier(self) -> str | None:
        return self.headers.get("X-Duotone-Tier")

    def images(self) -> list[Image.Image]:
        return [
            Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) for item in self.body["data"]
        ]


async def post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any] | bytes, **headers: str
) -> Answer:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    started = time.monotonic()
    async with session.post(
        f"{url}/v1/images/generations",
        data=data,
        headers={"Content-Type": "application/json", **headers},
    ) as response:
        payload = await response.json(content_type=None)
        return Answer(response.status, dict(response.headers), payload, started, time.monotonic())


async def post_many(
    url: str, bodies: list[dict[str, Any]], concurrency: int, **headers: str
) -> list[Answer]:
    """Send `bodies` with at most `concurrency` in flight; answers in the same order."""
    semaphore = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(body: dict[str, Any]) -> Answer:
            async with semaphore:
                return await post(session, url, body, **headers)

        return list(await asyncio.gather(*(one(b) for b in bodies)))
