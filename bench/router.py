#!/usr/bin/env python3
"""Router added latency: the same request through the router vs straight to Triton over gRPC.

One efficient tier (builtin://tiny, 64x64, 1 step) and the router start locally; rounds
alternate direct and routed calls one at a time, so both see the same machine noise. Prints
p50/p99 of each and the difference (the router's cost: HTTP, JSON, validation, base64).

    .venv/bin/python bench/router.py [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import tritonclient.grpc.aio as grpcaio

from duotone_contracts.api.validation import parse_imd
from duotone_contracts.limits import GenerationRequest
from duotone_router.backends import infer_inputs
from duotone_testbed.stack import LocalStack

MANIFEST = {
    "apiVersion": "duotone.io/v1alpha1",
    "kind": "ImageModelDeployment",
    "metadata": {"name": "bench", "namespace": "local"},
    "spec": {
        "runtime": {"image": "duotone-runtime:dev"},
        "tiers": {
            "efficient": {
                "model": {"source": "builtin://tiny", "dtype": "float32"},
                "defaults": {"steps": 1, "width": 64, "height": 64},
                "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
                "slo": {"p50LatencyMs": 60000},
            }
        },
    },
}


def quantile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def measure(stack: LocalStack, rounds: int) -> tuple[list[float], list[float]]:
    assert stack.router is not None
    server = stack.servers["efficient"][0]
    client = grpcaio.InferenceServerClient(server.grpc_url)
    request = GenerationRequest("bench", "", 1, 0.0, 64, 64, 1, 1)
    body = {"prompt": "bench", "seed": 1, "steps": 1, "size": "64x64"}
    direct, routed = [], []
    async with aiohttp.ClientSession() as session:
        for i in range(rounds + 10):
            started = time.perf_counter()
            await client.infer("duotone", infer_inputs(request))
            direct_s = time.perf_counter() - started
            started = time.perf_counter()
            async with session.post(
                f"{stack.router.url}/v1/images/generations", json=body
            ) as response:
                await response.read()
                assert response.status == 200, await response.text()
            routed_s = time.perf_counter() - started
            if i >= 10:  # warm-up rounds are dropped
                direct.append(direct_s * 1000)
                routed.append(routed_s * 1000)
    await client.close()
    return direct, routed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        stack = LocalStack.from_imd(parse_imd(MANIFEST), Path(workdir))
        stack.extra_server_args = ("--batch-invariant=off",)
        with stack:
            direct, routed = asyncio.run(measure(stack, args.requests))
    added = [r - d for r, d in zip(routed, direct, strict=True)]
    print(f"{args.requests} sequential requests, 64x64, 1 step, CPU")
    print("| path | p50 ms | p99 ms |")
    print("|---|---|---|")
    print(f"| Triton gRPC direct | {quantile(direct, 50):.2f} | {quantile(direct, 99):.2f} |")
    print(f"| through the router | {quantile(routed, 50):.2f} | {quantile(routed, 99):.2f} |")
    print(f"| added (paired) | {quantile(added, 50):.2f} | {quantile(added, 99):.2f} |")
    print(f"ratio routed/direct p50: {quantile(routed, 50) / quantile(direct, 50):.3f}")


if __name__ == "__main__":
    main()
