#!/usr/bin/env python3
"""Two CPU tiers computing at once: thread pools of every core per server vs one thread each.

Starts examples/tiny-cpu.yaml twice as local processes (an efficient and a flagship server on
builtin://tiny behind a router, `LocalStack`): in one stack each server's torch/OpenMP/MKL
pools have one thread per core of the machine (what every tier did before the runtime sized
its pools from its pod's CPU), in the other one thread each (`--cpu-threads 1`). Bursts of 16
concurrent requests, half naming each tier, go to the two stacks in alternating rounds, each
burst after the previous one has drained, so load from other processes hits both alike. Prints
per burst: wall seconds, p50 and max latency, timeouts (504: past the tier's requestTimeoutMs),
other errors, and the ratio of the two.

    .venv/bin/python bench/mixed_burst.py                 # a few minutes on 2 cores
    .venv/bin/python bench/mixed_burst.py --rounds 5 --requests 32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml

from duotone_contracts.api.validation import parse_imd
from duotone_runtime.cpu_threads import affinity_count
from duotone_testbed.local import wait_until
from duotone_testbed.stack import LocalStack

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("efficient", "flagship")


@dataclass
class Mode:
    """One stack's measurements, accumulated over the rounds."""

    label: str
    threads: int
    stack: LocalStack | None = None
    walls: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    sent: int = 0
    timeouts: int = 0
    errors: int = 0

    def row(self, baseline: Mode) -> str:
        wall = statistics.median(self.walls)
        return (
            f"| {self.label} | {self.threads} | {len(self.walls)} | {wall:.1f} | "
            f"{1000 * statistics.median(self.latencies):.0f} | {1000 * max(self.latencies):.0f} | "
            f"{self.timeouts} of {self.sent} | {self.errors} | "
            f"{wall / statistics.median(baseline.walls):.2f}x |"
        )


async def one(session: aiohttp.ClientSession, url: str, tier: str, i: int) -> tuple[int, float]:
    started = time.perf_counter()
    body = {"prompt": f"burst {i}", "tier": tier, "seed": i}
    async with session.post(f"{url}/v1/images/generations", json=body) as response:
        await response.read()
        return response.status, time.perf_counter() - started


async def burst(url: str, count: int) -> tuple[float, list[tuple[int, float]]]:
    """`count` requests at once, alternately naming each tier; wall seconds and the answers."""
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        started = time.perf_counter()
        answers = await asyncio.gather(*(one(session, url, TIERS[i % 2], i) for i in range(count)))
        return time.perf_counter() - started, list(answers)


def drained(stack: LocalStack) -> bool:
    """No request queued or executing on any server (a timed-out request may still run)."""
    return all(
        server.metric("nv_inference_pending_request_count")
        + server.metric("duotone_executing_requests")
        == 0
        for servers in stack.servers.values()
        for server in servers
    )


def measure(mode: Mode, count: int, record: bool) -> None:
    stack = mode.stack
    assert stack is not None
    assert stack.router is not None
    wall, answers = asyncio.run(burst(stack.router.url, count))
    wait_until(lambda: drained(stack), 120, f"the {mode.label} stack to drain")
    if not record:
        return
    mode.walls.append(wall)
    mode.sent += len(answers)
    mode.latencies += [seconds for status, seconds in answers if status == 200]
    mode.timeouts += sum(1 for status, _ in answers if status == 504)
    mode.errors += sum(1 for status, _ in answers if status not in {200, 504})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=ROOT / "examples" / "tiny-cpu.yaml")
    parser.add_argument("--requests", type=int, default=16, help="requests per burst")
    parser.add_argument("--rounds", type=int, default=3, help="measured bursts per stack")
    args = parser.parse_args()

    manifest = yaml.safe_load(args.example.read_text())
    manifest["metadata"]["namespace"] = "bench"
    imd = parse_imd(manifest)
    cores = affinity_count()
    modes = [Mode("every core per server (before)", cores), Mode("1 thread per server", 1)]
    with tempfile.TemporaryDirectory(prefix="duotone-bench-") as tmp:
        try:
            for number, mode in enumerate(modes):
                print(f"starting the {mode.label} stack ...", flush=True)
                mode.stack = LocalStack.from_imd(imd, Path(tmp) / f"stack-{number}")
                mode.stack.server_cpu_threads = mode.threads
                mode.stack.start()
            for mode in modes:
                measure(mode, args.requests, record=False)  # warm-up
            for number in range(args.rounds):
                print(f"round {number + 1}/{args.rounds}", flush=True)
                for mode in modes if number % 2 == 0 else modes[::-1]:
                    measure(mode, args.requests, record=True)
        finally:
            for mode in modes:
                if mode.stack is not None:
                    mode.stack.stop()

    print(
        f"\n{args.example.name} (efficient: 2 steps; flagship: 8 steps, guidance 5; 64x64), "
        f"CPU, {cores} cores, bursts of {args.requests} requests split across both tiers, "
        f"{args.rounds} rounds after a warm-up, stacks alternated\n"
    )
    print(
        "| server threads | per server | bursts | wall s (median) | p50 ms | max ms | "
        "timeouts | other errors | wall vs before |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        print(mode.row(modes[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
