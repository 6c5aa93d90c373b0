#!/usr/bin/env python3
"""Time to the first preview vs time to the final image, streamed through the router.

Starts an efficient and a flagship tier of `builtin://tiny` on CPU, both step-batched (the
mode that sends previews), behind the router (`LocalStack`), and calls them one request at a
time with the official `openai` SDK: `stream=True, partial_images=N` and the same request
unstreamed, alternating tiers and modes round by round so that machine noise hits them alike.
Each round uses a new seed (the same for its streamed and unstreamed calls).

Prints per tier: steps, previews asked for and received, p50 time to the first preview, to the
streamed final image and to the unstreamed image, and two ratios from the same run:
first preview / final image (how much sooner a client sees something) and streamed /
unstreamed final (what streaming costs).

    .venv/bin/python bench/streaming.py                  # about four minutes on 2 cores
    .venv/bin/python bench/streaming.py --rounds 20 --size 256 --flagship-steps 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from duotone_contracts.api.validation import parse_imd
from duotone_testbed.stack import LocalStack


def manifest(args: argparse.Namespace) -> dict[str, Any]:
    def tier(steps: int) -> dict[str, Any]:
        return {
            "model": {"source": "builtin://tiny", "dtype": "float32"},
            "defaults": {"steps": steps, "width": args.size, "height": args.size},
            "limits": {"maxSteps": steps, "maxWidth": args.size, "maxHeight": args.size},
            "batching": {"mode": "step", "maxBatchSize": 4, "requestTimeoutMs": 600000},
            "resources": {"gpus": 0, "cpu": "1", "memory": "2Gi"},
            "slo": {"p50LatencyMs": 600000},
        }

    return {
        "apiVersion": "duotone.io/v1alpha1",
        "kind": "ImageModelDeployment",
        "metadata": {"name": "bench", "namespace": "local"},
        "spec": {
            "runtime": {"image": "duotone-runtime:dev"},
            "tiers": {
                "efficient": tier(args.efficient_steps),
                "flagship": tier(args.flagship_steps),
            },
        },
    }


@dataclass
class Row:
    tier: str
    steps: int
    first_preview: list[float] = field(default_factory=list)
    streamed_final: list[float] = field(default_factory=list)
    unstreamed: list[float] = field(default_factory=list)
    previews: list[int] = field(default_factory=list)

    def line(self, asked: int) -> str:
        first = statistics.median(self.first_preview)
        final = statistics.median(self.streamed_final)
        plain = statistics.median(self.unstreamed)
        return (
            f"| {self.tier} | {self.steps} | {asked} | {statistics.median(self.previews):.0f} | "
            f"{first * 1000:.0f} | {final * 1000:.0f} | {plain * 1000:.0f} | "
            f"{first / final:.2f} | {final / plain:.2f} |"
        )


def streamed(client: openai.OpenAI, row: Row, seed: int, asked: int) -> None:
    started = time.perf_counter()
    first: float | None = None
    previews = 0
    events = client.images.generate(
        prompt="a lighthouse at dusk",
        stream=True,
        partial_images=asked,
        extra_body={"tier": row.tier, "seed": seed},
    )
    for event in events:
        now = time.perf_counter() - started
        if event.type == "image_generation.partial_image":
            previews += 1
            first = now if first is None else first
        elif event.type == "image_generation.completed":
            row.streamed_final.append(now)
    if first is None:
        raise SystemExit(f"the {row.tier} tier sent no preview")
    row.first_preview.append(first)
    row.previews.append(previews)


def unstreamed(client: openai.OpenAI, row: Row, seed: int) -> None:
    started = time.perf_counter()
    client.images.generate(
        prompt="a lighthouse at dusk", extra_body={"tier": row.tier, "seed": seed}
    )
    row.unstreamed.append(time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="measured rounds per tier")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--efficient-steps", type=int, default=4)
    parser.add_argument("--flagship-steps", type=int, default=30)
    parser.add_argument("--partial-images", type=int, default=2)
    args = parser.parse_args()
    rows = [Row("efficient", args.efficient_steps), Row("flagship", args.flagship_steps)]
    with tempfile.TemporaryDirectory() as workdir:
        stack = LocalStack.from_imd(parse_imd(manifest(args)), Path(workdir))
        with stack:
            assert stack.router is not None
            client = openai.OpenAI(
                base_url=f"{stack.router.url}/v1", api_key="unused", max_retries=0, timeout=600
            )
            for warmup in rows:  # first calls pay for lazy initialisation
                unstreamed(client, Row(warmup.tier, warmup.steps), 0)
            for i in range(args.rounds):
                for row in rows:
                    seed = 1000 + i
                    if i % 2:
                        unstreamed(client, row, seed)
                        streamed(client, row, seed, args.partial_images)
                    else:
                        streamed(client, row, seed, args.partial_images)
                        unstreamed(client, row, seed)
    print(
        f"{args.rounds} rounds per tier, {args.size}x{args.size}, one request at a time, "
        "builtin://tiny on CPU, both tiers step-batched"
    )
    print(
        "| tier | steps | previews asked | received | first preview p50 ms | "
        "final (streamed) p50 ms | final (unstreamed) p50 ms | first preview / final | "
        "streamed / unstreamed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.line(args.partial_images))
    return 0


if __name__ == "__main__":
    sys.exit(main())
