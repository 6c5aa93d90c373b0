#!/usr/bin/env python3
"""`make demo`: two real CPU tiers behind the router, driven through the OpenAI SDK.

Renders examples/tiny-cpu.yaml the way the operator does (tier.json and router.json), starts
an efficient and a flagship `duotone-runtime serve` (tritonserver on CPU, builtin://tiny) and
`duotone-router`, sends a mix of requests (split, named tiers, quality hints, a burst that
overflows the flagship, one invalid request), writes the PNGs to demo-output/, prints a table
per tier and stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import yaml

from duotone_contracts.api.validation import parse_imd
from duotone_testbed.stack import LocalStack

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Outcome:
    label: str
    tier: str
    route: str
    degraded: bool
    status: int
    seconds: float
    images: list[bytes]


def requests_mix(count: int) -> list[tuple[str, dict[str, Any]]]:
    """(label, SDK arguments): mostly unnamed (80/20 split), some named, a flagship burst."""
    mix: list[tuple[str, dict[str, Any]]] = []
    for i in range(count):
        mix.append((f"split-{i}", {"prompt": f"a lighthouse at dusk, variation {i}"}))
    mix += [
        ("quality-hd", {"prompt": "a detailed map", "quality": "hd"}),
        ("quality-standard", {"prompt": "a quick sketch", "quality": "standard"}),
        ("named-flagship", {"prompt": "a portrait", "extra_body": {"tier": "flagship"}}),
        ("seeded-a", {"prompt": "a red kite", "extra_body": {"seed": 7}}),
        ("wide", {"prompt": "a panorama", "size": "128x64", "n": 2}),
    ]
    mix += [
        (f"burst-{i}", {"prompt": f"burst {i}", "extra_body": {"tier": "flagship", "steps": 4}})
        for i in range(8)
    ]
    return mix


async def send(
    client: openai.AsyncOpenAI, label: str, arguments: dict[str, Any], limit: asyncio.Semaphore
) -> Outcome:
    async with limit:
        started = time.monotonic()
        try:
            raw = await client.images.with_raw_response.generate(
                response_format="b64_json", **arguments
            )
        except openai.APIStatusError as error:
            seconds = time.monotonic() - started
            print(f"  {label}: {error.status_code} {error.message}")
            return Outcome(label, "-", "-", False, error.status_code, seconds, [])
        seconds = time.monotonic() - started
        result = raw.parse()
        pngs = [base64.b64decode(d.b64_json or "") for d in result.data or []]
        return Outcome(
            label,
            raw.headers.get("x-duotone-tier", "?"),
            raw.headers.get("x-duotone-route", "?"),
            raw.headers.get("x-duotone-degraded") == "true",
            200,
            seconds,
            pngs,
        )


def percentile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| tier | requests | p50 ms | p95 ms | overflowed in | errors |",
        "|---|---|---|---|---|---|",
    ]
    by_tier: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in outcomes:
        by_tier[outcome.tier].append(outcome)
    for tier in sorted(by_tier):
        group = by_tier[tier]
        ok = [o.seconds * 1000 for o in group if o.status == 200]
        p50 = f"{percentile(ok, 50):.0f}" if ok else "-"
        p95 = f"{percentile(ok, 95):.0f}" if ok else "-"
        overflowed = sum(1 for o in group if o.route == "overflow")
        errors = sum(1 for o in group if o.status != 200)
        rows.append(f"| {tier} | {len(group)} | {p50} | {p95} | {overflowed} | {errors} |")
    return "\n".join(rows)


async def drive(url: str, count: int, concurrency: int) -> list[Outcome]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0)
    limit = asyncio.Semaphore(concurrency)
    outcomes = list(
        await asyncio.gather(
            *(send(client, label, arguments, limit) for label, arguments in requests_mix(count))
        )
    )
    # One request beyond the efficient tier's limits: refused with the field named, no GPU work.
    outcomes.append(
        await send(
            client,
            "too-many-steps",
            {"prompt": "x", "extra_body": {"steps": 99, "tier": "efficient"}},
            limit,
        )
    )
    await client.close()
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=ROOT / "examples" / "tiny-cpu.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output")
    parser.add_argument("--requests", type=int, default=40, help="unnamed requests in the mix")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    args = parser.parse_args()

    manifest = yaml.safe_load(args.example.read_text())
    manifest["metadata"].setdefault("namespace", "demo")
    imd = parse_imd(manifest)
    print(f"==> starting the {', '.join(imd.spec.tiers.present())} tiers and the router (CPU)")
    started = time.monotonic()
    with LocalStack.from_imd(imd, args.workdir) as stack:
        assert stack.router is not None
        print(f"==> ready in {time.monotonic() - started:.0f}s; endpoint {stack.router.url}/v1")
        outcomes = asyncio.run(drive(stack.router.url, args.requests, args.concurrency))
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    for outcome in outcomes:
        for j, png in enumerate(outcome.images):
            (args.out / f"{outcome.label}-{outcome.tier}-{j}.png").write_bytes(png)
            written += 1
    print(f"==> {len(outcomes)} requests, {written} images in {args.out}")
    print(table(outcomes))
    refused = [o for o in outcomes if o.label == "too-many-steps"]
    return 0 if refused and refused[0].status == 422 else 1


if __name__ == "__main__":
    sys.exit(main())
