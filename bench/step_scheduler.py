"""Request batching vs step batching under open-loop load, measured in the same run.

Serves `builtin://tiny` on CPU twice with the real launcher and tritonserver: one tier pod in
`batching.mode: request` (Triton's dynamic batcher, whole requests) and one in `mode: step`
(the runtime's step loop). Both pods are called the way the router calls them
(`duotone_router.backends.Backend`: unary gRPC, or a gRPC stream for the decoupled step model),
with the router's deadline passed down.

1. Capacity: closed-loop clients (as many as the batch holds) send the request mix to the
   request-mode pod; completed requests per second is the tier's capacity. Each step count's
   unloaded latency is measured too.
2. Load: Poisson arrivals at 50%, 80% and 95% of that capacity (the same seeded arrival times
   and request mix for both modes), mixed step counts; each request's deadline is
   `--deadline-factor` x its unloaded latency. The modes alternate per level.

Both pods run with batched layers by default (`--batch-invariant off`): with the per-sample
layers that make CPU bytes exact, a batch costs exactly its requests one by one and batching,
in either mode, saves nothing; batched layers make CPU behave like a GPU, where a batch costs
much less than its parts, which is what batching is for.

Prints, per level and mode: offered and served requests/s (answered in time), p50/p95/p99
latency of the requests answered in time, p95 over every request with a missed one counted at
its deadline, the deadline-miss rate (refused, dropped, timed out or answered late), and the
step/request ratios.

    .venv/bin/python bench/step_scheduler.py                 # about 6 minutes on 2 cores
    .venv/bin/python bench/step_scheduler.py --seconds 60 --levels 0.5,0.8,0.95,1.1
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duotone_contracts.limits import GenerationRequest
from duotone_router.backends import Backend, BackendError
from duotone_testbed.local import LocalServer


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tier_document(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    return {
        "name": "efficient",
        "spec": {
            "model": {"source": "builtin://tiny", "dtype": "float32"},
            "defaults": {"steps": 4, "guidanceScale": 0.0, "width": args.size, "height": args.size},
            "limits": {
                "maxSteps": max(args.steps),
                "maxWidth": args.size,
                "maxHeight": args.size,
                "maxGuidanceScale": 20,
                "maxImagesPerRequest": 1,
                "maxPromptLength": 200,
            },
            "batching": {
                "mode": mode,
                "maxBatchSize": args.batch,
                "maxQueueDelayMs": args.queue_delay_ms,
                "maxQueueSize": 1024,
                "requestTimeoutMs": 600000,
            },
            "resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"},
        },
    }


def request(args: argparse.Namespace, i: int, steps: int) -> GenerationRequest:
    return GenerationRequest(
        f"a lighthouse at dusk, number {i}", "", steps, 0.0, args.size, args.size, i, 1
    )


@dataclass
class Result:
    mode: str
    level: float
    offered: float
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    """Latencies of the requests answered in time."""
    censored: list[float] = field(default_factory=list)
    """Every request's latency, a missed one counted at its deadline (what it cost its
    client at least)."""
    missed: int = 0
    sent: int = 0

    def served(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def row(self) -> str:
        return (
            f"| {self.level:.0%} | {self.mode} | {self.offered:.2f} | {self.served():.2f} | "
            f"{1000 * percentile(self.latencies, 0.5):.0f} | "
            f"{1000 * percentile(self.latencies, 0.95):.0f} | "
            f"{1000 * percentile(self.latencies, 0.99):.0f} | "
            f"{1000 * percentile(self.censored, 0.95):.0f} | "
            f"{self.missed / max(1, self.sent):.1%} |"
        )


async def call(
    backend: Backend, r: GenerationRequest, *, stepped: bool, timeout_s: float, name: str
) -> float | None:
    """One request with its deadline passed down, as the router sends it; its latency, or None
    when it missed the deadline (refused, dropped or timed out)."""
    started = time.perf_counter()
    sent = dataclasses.replace(r, deadline_ms=max(1, int(timeout_s * 1000)))
    try:
        await backend.generate(sent, timeout_s=timeout_s, request_id=name, stream=stepped)
    except BackendError:
        return None
    latency = time.perf_counter() - started
    return latency if latency <= timeout_s else None


async def closed_loop(
    args: argparse.Namespace, backend: Backend, stepped: bool, count: int
) -> float:
    """Completed requests per second with `args.batch` clients sending the mix back to back."""
    mix = random.Random(1)  # noqa: S311 - a reproducible mix
    queue = [request(args, i, mix.choice(args.steps)) for i in range(count)]

    async def client() -> None:
        while queue:
            r = queue.pop()
            await call(backend, r, stepped=stepped, timeout_s=600, name=f"cap-{r.seed}")

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.batch)))
    return count / (time.perf_counter() - started)


async def unloaded(args: argparse.Namespace, backend: Backend) -> dict[int, float]:
    """Each step count's latency alone (median of three)."""
    latencies: dict[int, float] = {}
    for steps in args.steps:
        runs = []
        for i in range(3):
            latency = await call(
                backend, request(args, i, steps), stepped=False, timeout_s=600, name="alone"
            )
            assert latency is not None, "an unloaded request failed"
            runs.append(latency)
        latencies[steps] = statistics.median(runs)
    return latencies


async def open_loop(
    args: argparse.Namespace,
    backend: Backend,
    *,
    stepped: bool,
    rate: float,
    alone: dict[int, float],
    into: Result,
) -> None:
    """Poisson arrivals at `rate` for `args.seconds` (the same sequence for every mode)."""
    arrivals = random.Random(int(rate * 1000))  # noqa: S311 - reproducible arrivals
    mix = random.Random(2)  # noqa: S311 - a reproducible mix
    tasks = []
    deadlines: list[float] = []
    started = time.perf_counter()
    at = 0.0
    i = 0
    while True:
        at += arrivals.expovariate(rate)
        if at > args.seconds:
            break
        delay = started + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the arrivals, not synchronising
        steps = mix.choice(args.steps)
        deadline = args.deadline_factor * alone[steps]
        r = request(args, 10000 + i, steps)
        deadlines.append(deadline)
        tasks.append(
            asyncio.ensure_future(
                call(backend, r, stepped=stepped, timeout_s=deadline, name=f"load-{i}")
            )
        )
        i += 1
    results = await asyncio.gather(*tasks)
    into.seconds = time.perf_counter() - started
    into.sent = len(results)
    into.latencies = [r for r in results if r is not None]
    into.censored = [d if r is None else r for r, d in zip(results, deadlines, strict=True)]
    into.missed = sum(1 for r in results if r is None)


async def bench(args: argparse.Namespace, servers: dict[str, LocalServer]) -> int:
    backends = {mode: Backend(server.grpc_url) for mode, server in servers.items()}
    try:
        alone = await unloaded(args, backends["request"])
        await closed_loop(args, backends["step"], True, args.batch * 2)  # warm the step pod
        capacity = await closed_loop(args, backends["request"], False, args.capacity_requests)
        step_capacity = await closed_loop(args, backends["step"], True, args.capacity_requests)
        print(
            f"capacity (closed loop, {args.batch} clients): request mode {capacity:.2f} req/s, "
            f"step mode {step_capacity:.2f} req/s; unloaded latency (ms): "
            + ", ".join(f"{s} steps {1000 * v:.0f}" for s, v in alone.items())
        )
        print(
            f"\nsize {args.size}x{args.size}, steps mixed from {args.steps}, batch {args.batch}, "
            f"{args.seconds:g} s per level, deadline {args.deadline_factor:g}x unloaded latency\n"
        )
        print(
            "| load | mode | offered req/s | served req/s | p50 ms | p95 ms | p99 ms "
            "| p95 ms, misses at deadline | missed |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        ratios = []
        for level in args.levels:
            rate = level * capacity
            results = {}
            for mode in ("request", "step"):
                results[mode] = Result(mode, level, rate)
                await open_loop(
                    args,
                    backends[mode],
                    stepped=mode == "step",
                    rate=rate,
                    alone=alone,
                    into=results[mode],
                )
                print(results[mode].row(), flush=True)
            request_mode, step_mode = results["request"], results["step"]
            ratios.append(
                (
                    level,
                    percentile(step_mode.latencies, 0.95)
                    / percentile(request_mode.latencies, 0.95),
                    percentile(step_mode.censored, 0.95) / percentile(request_mode.censored, 0.95),
                    step_mode.served() / max(request_mode.served(), 1e-9),
                )
            )
        print(
            "\n| load | p95 step/request | p95 (misses at deadline) step/request "
            "| served step/request |"
        )
        print("|---|---|---|---|")
        for level, p95, censored, throughput in ratios:
            print(f"| {level:.0%} | {p95:.2f}x | {censored:.2f}x | {throughput:.2f}x |")
    finally:
        for backend in backends.values():
            await backend.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="arrivals per level")
    parser.add_argument("--levels", default="0.5,0.8,0.95", help="loads, shares of capacity")
    parser.add_argument("--steps", default="2,4,8,16", help="the step counts mixed")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="maxBatchSize of both modes")
    parser.add_argument("--queue-delay-ms", type=int, default=5)
    parser.add_argument("--capacity-requests", type=int, default=80)
    parser.add_argument("--deadline-factor", type=float, default=5.0)
    parser.add_argument(
        "--batch-invariant",
        choices=("on", "off"),
        default="off",
        help="off (default): batched layers, where a batch costs less than its requests one by "
        "one, as on a GPU; on: per-sample layers (the CPU default for exact bytes), where "
        "batching saves nothing and only the scheduling order differs",
    )
    args = parser.parse_args()
    args.levels = [float(v) for v in args.levels.split(",")]
    args.steps = [int(v) for v in args.steps.split(",")]
    with tempfile.TemporaryDirectory(prefix="duotone-step-bench-") as root:
        servers = {
            mode: LocalServer(
                Path(root) / mode,
                tier_document(args, mode),
                extra_args=[f"--batch-invariant={args.batch_invariant}"],
            )
            for mode in ("request", "step")
        }
        try:
            for server in servers.values():
                server.start()
            return asyncio.run(bench(args, servers))
        finally:
            for server in servers.values():
                server.terminate()


if __name__ == "__main__":
    sys.exit(main())
