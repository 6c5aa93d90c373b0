"""Served images/s by output format (png, jpeg, webp), against png in the same run.

Serves `builtin://tiny` on CPU with the real launcher and tritonserver and sends gRPC requests
from `--concurrency` clients, one output format per measurement; the formats are interleaved
in rounds (png, jpeg, webp, png, ...) so that load from other processes hits all of them alike.
Then times the encoders alone on the served images (each file decoded back to pixels and
encoded again, as the runtime encodes it). The tiny model's images are mostly noise, the worst
case for every encoder: real images compress faster and smaller.

    .venv/bin/python bench/formats.py                       # about two minutes on 2 cores
    .venv/bin/python bench/formats.py --size 512 --rounds 4
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image

from duotone_runtime.execution import encode_image
from duotone_testbed.clients import ImageRequest, generate_grpc
from duotone_testbed.local import LocalServer

FORMATS = (("png", 100), ("jpeg", 100), ("jpeg", 80), ("webp", 80))


@dataclass
class Row:
    """One format's measurements over the rounds."""

    output_format: str
    compression: int
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    requests: int = 0
    sizes: list[int] = field(default_factory=list)
    files: list[bytes] = field(default_factory=list)

    @property
    def label(self) -> str:
        return (
            self.output_format
            if self.output_format == "png"
            else (f"{self.output_format} q{self.compression}")
        )

    def images_per_s(self) -> float:
        return self.requests / self.wall


def tier_document(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "name": "efficient",
        "spec": {
            "model": {"source": "builtin://tiny", "dtype": "float32"},
            "defaults": {
                "steps": args.steps,
                "guidanceScale": 0.0,
                "width": args.size,
                "height": args.size,
            },
            "limits": {"maxSteps": 50, "maxWidth": 1024, "maxHeight": 1024},
            "batching": {
                "maxBatchSize": 8,
                "maxQueueDelayMs": 5,
                "maxQueueSize": 1024,
                "requestTimeoutMs": 600000,
            },
            "resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"},
        },
    }


def request(args: argparse.Namespace, row: Row, i: int) -> ImageRequest:
    """Every input set, as the router sends them (Triton batches equal input sets only)."""
    return ImageRequest(
        f"prompt {i}",
        negative_prompt="",
        steps=args.steps,
        guidance_scale=0.0,
        width=args.size,
        height=args.size,
        seed=i,
        num_images=1,
        output_format=row.output_format,
        output_compression=row.compression,
        strength=1.0,
        image=b"",
        mask=b"",
    )


def measure(args: argparse.Namespace, url: str, row: Row, count: int) -> None:
    """`count` requests of `row`'s format from `args.concurrency` clients."""
    lock = threading.Lock()
    numbers = iter(range(count))
    errors: list[BaseException] = []
    clients = [grpcclient.InferenceServerClient(url) for _ in range(args.concurrency)]

    def worker(client: Any) -> None:
        try:
            while True:
                with lock:
                    i = next(numbers, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                files = generate_grpc(client, request(args, row, i))
                with lock:
                    row.latencies.append(time.perf_counter() - t0)
                    row.sizes.extend(len(f) for f in files)
                    if len(row.files) < args.encode_samples:
                        row.files.extend(files)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    row.wall += time.perf_counter() - started
    for client in clients:
        client.close()
    if errors:
        raise RuntimeError(f"requests failed: {errors[0]!r}")
    row.requests += count


def encode_ms(row: Row, pixels: list[Any]) -> float:
    """Median ms to encode one image in `row`'s format, on one thread."""
    times = []
    for image in pixels:
        t0 = time.perf_counter()
        encode_image(image, row.output_format, row.compression)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--per-round", type=int, default=16, help="requests per format, round")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="width and height")
    parser.add_argument("--encode-samples", type=int, default=8)
    args = parser.parse_args()

    rows = [Row(fmt, quality) for fmt, quality in FORMATS]
    with tempfile.TemporaryDirectory(prefix="duotone-bench-") as tmp:
        server = LocalServer(Path(tmp) / "server", tier_document(args), cpu_threads=None)
        print(f"starting tritonserver with builtin://tiny ({server.http_url}) ...", flush=True)
        server.start()
        try:
            warm = Row("png", 100)
            measure(args, server.grpc_url, warm, args.concurrency)
            for number in range(args.rounds):
                print(f"round {number + 1}/{args.rounds}", flush=True)
                for row in rows:
                    measure(args, server.grpc_url, row, args.per_round)
        finally:
            server.terminate()

    served = rows[0].files
    pixels = [np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in served]
    png = rows[0]
    png_encode = encode_ms(png, pixels)
    print(
        f"\nbuiltin://tiny, {args.size}x{args.size}, {args.steps} steps, CPU, concurrency "
        f"{args.concurrency}, {args.rounds} x {args.per_round} requests per row (interleaved)\n"
    )
    print("| format | images/s | vs png | p50 ms | mean file KiB | encode ms/image | vs png |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        encode = encode_ms(row, pixels)
        print(
            f"| {row.label} | {row.images_per_s():.1f} | "
            f"{row.images_per_s() / png.images_per_s():.2f}x | "
            f"{1000 * statistics.median(row.latencies):.0f} | "
            f"{statistics.mean(row.sizes) / 1024:.1f} | {encode:.2f} | "
            f"{encode / png_encode:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
