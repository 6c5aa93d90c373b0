"""Served throughput vs calling the pipeline directly, measured in the same run.

Serves `builtin://tiny` on CPU with the real launcher and tritonserver, then compares:
- naive: the same pipeline loaded in this process, called one request at a time (PNG included);
- served: gRPC clients at concurrency 1, 4 and 8 against Triton's dynamic batcher, through the
  pod's port (the drain gate in front of tritonserver);
- direct: the same clients straight to tritonserver's loopback port, without the gate.
The modes are interleaved in rounds (naive, c=1, c=4, c=8, naive, ...) so that load from other
processes on a shared machine hits all of them alike. Prints images/s, p50/p95 latency, the mean
batch Triton formed, the ratio to naive, and the gate's cost (served vs direct).

    .venv/bin/python bench/runtime.py                      # a few minutes on 2 cores
    .venv/bin/python bench/runtime.py --rounds 8 --width 128 --height 128
    .venv/bin/python bench/runtime.py --batch-invariant off  # served without per-sample layers
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tritonclient.grpc as grpcclient

from duotone_contracts.limits import GenerationRequest
from duotone_runtime.batching import ShapeKey
from duotone_runtime.execution import PipelineRunner
from duotone_runtime.loading import load_pipeline, resolve_source
from duotone_testbed.clients import ImageRequest, generate_grpc
from duotone_testbed.local import LocalServer


@dataclass
class Measurement:
    """Accumulated over the rounds of one mode."""

    mode: str
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    requests: int = 0
    executions: float = 0.0
    inferences: float = 0.0

    def row(self, naive: Measurement) -> str:
        images_per_s = self.requests / self.wall
        mean_batch = self.inferences / self.executions if self.executions else 1.0
        return (
            f"| {self.mode} | {self.concurrency} | {images_per_s:.1f} | "
            f"{1000 * statistics.median(self.latencies):.0f} | "
            f"{1000 * percentile(self.latencies, 0.95):.0f} | {mean_batch:.1f} | "
            f"{images_per_s / (naive.requests / naive.wall):.2f}x |"
        )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def tier_document(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "efficient",
        "spec": {
            "model": {"source": "builtin://tiny", "dtype": "float32"},
            "defaults": {
                "steps": args.steps,
                "guidanceScale": 0.0,
                "width": args.width,
                "height": args.height,
            },
            "limits": {"maxSteps": 50, "maxWidth": 512, "maxHeight": 512},
            "batching": {
                "maxBatchSize": args.max_batch_size,
                "maxQueueDelayMs": args.max_queue_delay_ms,
                "maxQueueSize": 1024,
                "requestTimeoutMs": 600000,
            },
            "resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"},
        },
    }


def request(args: argparse.Namespace, i: int) -> ImageRequest:
    """Every input set, as the router sends them (Triton batches equal input sets only)."""
    return ImageRequest(
        f"prompt {i}",
        negative_prompt="",
        steps=args.steps,
        guidance_scale=0.0,
        width=args.width,
        height=args.height,
        seed=i,
        num_images=1,
    )


class Naive:
    """The pipeline called directly, one request at a time (what a plain script would do)."""

    def __init__(self, args: argparse.Namespace, cache_dir: Path) -> None:
        resolved = resolve_source("builtin://tiny", pvc_root=cache_dir, cache_dir=cache_dir)
        pipeline = load_pipeline(resolved, dtype="float32", device="cpu")
        self.runner = PipelineRunner(pipeline, device="cpu", batch_invariant=False)
        self.args = args
        self.shape = ShapeKey(args.width, args.height, args.steps, 0.0)

    def one(self, i: int) -> None:
        a = self.args
        self.runner.run(
            self.shape,
            [GenerationRequest(f"prompt {i}", "", a.steps, 0.0, a.width, a.height, i, 1)],
        )

    def measure(self, into: Measurement, count: int) -> None:
        started = time.perf_counter()
        for i in range(count):
            t0 = time.perf_counter()
            self.one(i)
            into.latencies.append(time.perf_counter() - t0)
        into.wall += time.perf_counter() - started
        into.requests += count


def measure_served(
    args: argparse.Namespace, server: LocalServer, into: Measurement, count: int, url: str
) -> None:
    """`count` requests from `into.concurrency` gRPC clients to `url`, each waiting for its
    answer."""
    errors: list[BaseException] = []
    lock = threading.Lock()
    numbers = iter(range(count))
    clients = [grpcclient.InferenceServerClient(url) for _ in range(into.concurrency)]

    def worker(client: Any) -> None:
        try:
            while True:
                with lock:
                    i = next(numbers, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                generate_grpc(client, request(args, i))
                with lock:
                    into.latencies.append(time.perf_counter() - t0)
        except BaseException as error:
            errors.append(error)

    executions = server.metric("nv_inference_exec_count")
    inferences = server.metric("nv_inference_count")
    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    into.wall += time.perf_counter() - started
    for client in clients:
        client.close()
    if errors:
        raise RuntimeError(f"served requests failed: {errors[0]!r}")
    into.requests += count
    into.executions += server.metric("nv_inference_exec_count") - executions
    into.inferences += server.metric("nv_inference_count") - inferences


def round_trips(urls: dict[str, str], count: int = 200) -> dict[str, float]:
    """Median ms of `ServerReady` (no model work) per URL, the URLs alternated call by call."""
    clients = {name: grpcclient.InferenceServerClient(url) for name, url in urls.items()}
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    for i in range(count):
        order = list(clients.items()) if i % 2 else list(reversed(clients.items()))
        for name, client in order:
            t0 = time.perf_counter()
            client.is_server_ready()
            latencies[name].append(time.perf_counter() - t0)
    for client in clients.values():
        client.close()
    return {name: 1000 * statistics.median(values) for name, values in latencies.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--per-round", type=int, default=16, help="requests per mode and round")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=int, default=5)
    parser.add_argument("--batch-invariant", choices=("on", "off"), default="on")
    parser.add_argument("--warmup", type=int, default=4)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    naive_row = Measurement("naive (direct, batch 1)", 1)
    served_rows = [Measurement("served (gate + Triton, gRPC)", c) for c in levels]
    direct_rows = [Measurement("direct (Triton's own port)", c) for c in levels]
    with tempfile.TemporaryDirectory(prefix="duotone-bench-") as tmp:
        server = LocalServer(
            Path(tmp) / "server",
            tier_document(args),
            extra_args=(f"--batch-invariant={args.batch_invariant}",),
            cpu_threads=None,  # one server alone: every core, like the naive mode's pipeline
        )
        print(f"starting tritonserver with builtin://tiny ({server.http_url}) ...", flush=True)
        server.start()
        try:
            naive = Naive(args, Path(tmp) / "cache")
            for i in range(args.warmup):
                naive.one(-1 - i)
            direct_url = f"127.0.0.1:{server.triton_grpc_port}"
            measure_served(args, server, Measurement("warm-up", 1), args.warmup, server.grpc_url)
            for number in range(args.rounds):
                print(f"round {number + 1}/{args.rounds}", flush=True)
                naive.measure(naive_row, args.per_round)
                for served, direct in zip(served_rows, direct_rows, strict=True):
                    measure_served(args, server, served, args.per_round, server.grpc_url)
                    measure_served(args, server, direct, args.per_round, direct_url)
            trips = round_trips({"gate": server.grpc_url, "direct": direct_url})
        finally:
            server.terminate()

    print(
        f"\nbuiltin://tiny, {args.width}x{args.height}, {args.steps} steps, CPU, "
        f"{args.rounds} x {args.per_round} requests per row (interleaved), "
        f"maxBatchSize {args.max_batch_size}, maxQueueDelayMs {args.max_queue_delay_ms}, "
        f"batch-invariant {args.batch_invariant}\n"
    )
    print("| mode | concurrency | images/s | p50 ms | p95 ms | mean batch | vs naive |")
    print("|---|---|---|---|---|---|---|")
    for row in [naive_row, *served_rows, *direct_rows]:
        print(row.row(naive_row))
    print("\nThe drain gate's cost (served / direct; 1.00 = none):\n")
    print("| concurrency | images/s | p50 | p95 |")
    print("|---|---|---|---|")
    for served, direct in zip(served_rows, direct_rows, strict=True):
        print(
            f"| {served.concurrency} | "
            f"{(served.requests / served.wall) / (direct.requests / direct.wall):.2f} | "
            f"{statistics.median(served.latencies) / statistics.median(direct.latencies):.2f} | "
            f"{percentile(served.latencies, 0.95) / percentile(direct.latencies, 0.95):.2f} |"
        )
    print(
        "\ngRPC ServerReady round trip (no model work), median of 200: "
        f"gate {trips['gate']:.2f} ms, direct {trips['direct']:.2f} ms "
        f"({trips['gate'] - trips['direct']:+.2f} ms per call)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
