"""Autoscaler benchmark: reaction time to a queue-depth breach, and stability at capacity.

1. Real loop: a local control plane, a real Prometheus scraping every second, and the real
   operator at its default interval (2 s). A stand-in pod exporter (a named fake for a GPU pod:
   it serves Triton's queue gauge with a value this script sets) breaches the queue target at
   random moments; the time until the tier Deployment's spec.replicas changes in the API server
   is measured, 20 times by default.
2. Same trace, two algorithms: Duotone's `decide` and an HPA-style algorithm at HPA's defaults
   (15 s sync, 10 % tolerance, 300 s scale-down window, +100 % or +4 pods per sync), fed the
   same breach times and 10 simulated minutes of noisy load at capacity.

    python bench/autoscaler.py              # both parts
    python bench/autoscaler.py --sim-only   # part 2 only (seconds, no control plane)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

from kubernetes import client as k8s
from local_cluster import ROOT, bench_cluster, percentile

from duotone_operator.adapters.kubernetes import client_configuration
from duotone_operator.policy.autoscaling import (
    ScalingSpec,
    TierMetrics,
    TierObservation,
    decide,
    initial_state,
)
from tests.support.builders import imd
from tests.support.cluster import wait_for
from tests.support.prometheus import ScrapeTarget, start_prometheus

INTERVAL_S = 2.0
"""The operator's default `--autoscale-interval-seconds`."""
SCRAPE_S = 1.0
HPA_SYNC_S = 15.0
HPA_WINDOW_S = 300.0
HPA_TOLERANCE = 0.1
SPEC = ScalingSpec(
    minimum=1,
    maximum=16,
    target_queue_per_replica=4,
    slo_p50_ms=400,
    latency_tolerance=0.1,
    stabilization_seconds=300,
    scale_to_zero_idle_seconds=600,
)


# --------------------------------------------------------------------------- simulation


@dataclass
class HpaStyle:
    """HPA's algorithm at its defaults on one metric (queue per replica, target 4)."""

    replicas: int
    history: list[tuple[float, int]]

    def sync(self, queue: float, now: float) -> int:
        current = self.replicas
        ratio = (queue / current) / SPEC.target_queue_per_replica if current else 0.0
        wanted = current if abs(ratio - 1) <= HPA_TOLERANCE else math.ceil(current * ratio)
        wanted = max(SPEC.minimum, min(SPEC.maximum, wanted))
        self.history = [(t, r) for t, r in self.history if t > now - HPA_WINDOW_S]
        self.history.append((now, wanted))
        if wanted < current:
            wanted = min(current, max(r for _, r in self.history))
        limit = max(2 * current, current + 4)
        self.replicas = min(wanted, limit)
        return self.replicas


def simulate(
    queue_at: Callable[[float], float],
    duration_s: float,
    start: int,
    seed: int,
) -> dict[str, list[tuple[float, int]]]:
    """Both algorithms over the same queue trace; the replica changes of each.

    Duotone reads a 1 s scrape every 2 s; the HPA-style one reads the same 1 s scrape every
    15 s. Each starts at a random phase."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible trace
    results: dict[str, list[tuple[float, int]]] = {}

    def scraped(t: float, phase: float) -> float:
        return queue_at(math.floor((t - phase) / SCRAPE_S) * SCRAPE_S + phase)

    # Duotone
    phase, scrape_phase = rng.uniform(0, INTERVAL_S), rng.uniform(0, SCRAPE_S)
    replicas, state = start, initial_state(start, 0.0)
    changes: list[tuple[float, int]] = []
    t = phase
    while t < duration_s:
        metrics = TierMetrics(at=t, queued=scraped(t, scrape_phase), executing=0)
        decision, state = decide(TierObservation(replicas, replicas, metrics), SPEC, state, t)
        if decision.replicas != replicas:
            replicas = decision.replicas
            changes.append((t, replicas))
        t += INTERVAL_S
    results["duotone"] = changes

    hpa = HpaStyle(start, [(0.0, start)])
    phase = rng.uniform(0, HPA_SYNC_S)
    changes = []
    t = phase
    while t < duration_s:
        before = hpa.replicas
        if hpa.sync(scraped(t, scrape_phase), t) != before:
            changes.append((t, hpa.replicas))
        t += HPA_SYNC_S
    results["hpa-style"] = changes
    return results


def direction_changes(changes: Sequence[tuple[float, int]], start: int) -> int:
    """Reversals: an increase followed by a decrease or the other way round."""
    reversals, last_direction, current = 0, 0, start
    for _, replicas in changes:
        direction = 1 if replicas > current else -1
        if last_direction and direction != last_direction:
            reversals += 1
        last_direction, current = direction, replicas
    return reversals


def breach_latencies(seed: int, count: int) -> dict[str, list[float]]:
    """Queue jumps from 4 (1 replica at target) to 8 at a random moment; time to scale up."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible trace
    found: dict[str, list[float]] = {"duotone": [], "hpa-style": []}
    for i in range(count):
        breach = 20 + rng.uniform(0, 15)

        def queue(t: float, at: float = breach) -> float:
            return 8.0 if t >= at else 4.0

        for name, changes in simulate(queue, breach + 60, 1, seed + i).items():
            ups = [t for t, r in changes if t >= breach and r > 1]
            found[name].append(ups[0] - breach if ups else math.inf)
    return found


def steady_at_capacity(seed: int, minutes: float) -> dict[str, tuple[int, int, float]]:
    """4 replicas at capacity (queue 16 at 4 per replica) with +-25 % noise for `minutes`:
    (scale events, direction changes, mean replicas) per algorithm."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible trace
    samples = {s: 16 * rng.uniform(0.75, 1.25) for s in range(int(minutes * 60) + 1)}
    results = simulate(lambda t: samples[int(t)], minutes * 60, 4, seed)
    summary = {}
    for name, changes in results.items():
        timeline = [(0.0, 4), *changes, (minutes * 60, changes[-1][1] if changes else 4)]
        area = sum((b[0] - a[0]) * a[1] for a, b in itertools.pairwise(timeline))
        summary[name] = (len(changes), direction_changes(changes, 4), area / (minutes * 60))
    return summary


# --------------------------------------------------------------------------- real loop


class PodExporter:
    """Fake GPU pod: Triton-format queue metrics with a value set by the benchmark."""

    def __init__(self) -> None:
        self.queued = 0.0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (
                    "# TYPE nv_inference_pending_request_count gauge\n"
                    f'nv_inference_pending_request_count{{model="duotone",version="1"}} '
                    f"{exporter.queued}\n"
                    "# TYPE duotone_executing_requests gauge\n"
                    'duotone_executing_requests{model="duotone",tier="efficient"} 0\n'
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def real_loop(count: int, seed: int) -> list[float]:
    rng = random.Random(seed)  # noqa: S311 - a reproducible trace
    exporter = PodExporter()
    with bench_cluster() as cluster, contextlib.ExitStack() as cleanup:
        cleanup.callback(exporter.server.shutdown)
        cluster.kubectl("create", "namespace", "bench")
        prometheus = start_prometheus(
            cluster.state / "prometheus",
            [
                ScrapeTarget(
                    f"127.0.0.1:{exporter.port}",
                    {"namespace": "bench", "service": "bench-efficient"},
                )
            ],
        )
        cleanup.callback(prometheus.stop)
        manifest = (
            imd("bench")
            .tier("efficient", min=1, max=8, gpus=0)
            .resources(cpu="100m", memory="128Mi")
            .router(replicas=1, resources={"cpu": "100m", "memory": "128Mi"})
            .autoscaling(
                targetQueueDepthPerReplica=4,
                scaleDownStabilizationSeconds=0,
                metrics={"source": "prometheus", "prometheusUrl": prometheus.url},
            )
            .build()
        )
        manifest["metadata"]["namespace"] = "bench"
        log_path = cluster.state / "operator.log"
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "duotone_operator",
                    "--namespace=bench",
                    f"--kubeconfig={cluster.kubeconfig}",
                    "--log-format=text",
                    "--health-port=0",
                    "--metrics-port=0",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=cluster.env,
                cwd=ROOT,
            )
        cleanup.callback(operator.wait, 30)
        cleanup.callback(operator.terminate)
        cluster.kubectl("apply", "--server-side", "-f", "-", stdin=json.dumps(manifest).encode())
        apps = k8s.AppsV1Api(k8s.ApiClient(client_configuration(str(cluster.kubeconfig))))

        def replicas() -> int | None:
            try:
                found = apps.read_namespaced_deployment("bench-efficient", "bench")
            except k8s.ApiException:
                return None
            return None if found.spec is None else found.spec.replicas

        def wait(condition: Callable[[], bool], what: str) -> float:
            """Poll every 20 ms (the measurement's resolution); the time it first held."""
            try:
                wait_for(condition, timeout_s=60, what=what, interval_s=0.02)
            except TimeoutError as error:
                raise TimeoutError(f"{error}\n{log_path.read_text()[-3000:]}") from None
            return time.monotonic()

        wait(lambda: replicas() == 1, "the tier at 1 replica")
        latencies = []
        for _ in range(count):
            time.sleep(rng.uniform(0, INTERVAL_S))  # a random phase against the timer
            breached = time.monotonic()
            exporter.queued = 8.0  # 1 replica, 4 per replica: wants 2
            latencies.append(wait(lambda: replicas() == 2, "the scale-up") - breached)
            exporter.queued = 0.0
            wait(lambda: replicas() == 1, "the scale-down")
        return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--breaches", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--sim-only", action="store_true")
    args = parser.parse_args()

    simulated = breach_latencies(args.seed, 200)
    steady = steady_at_capacity(args.seed, args.minutes)
    real = [] if args.sim_only else real_loop(args.breaches, args.seed)

    print("\nBreach of the queue target -> scale patch (seconds)\n")
    print("| algorithm | n | p50 | p95 | max |")
    print("|---|---|---|---|---|")
    if real:
        print(
            f"| Duotone, real loop (operator + API server + Prometheus 1 s scrape) | {len(real)}"
            f" | {statistics.median(real):.2f} | {percentile(real, 0.95):.2f} | {max(real):.2f} |"
        )
    for name, values in simulated.items():
        print(
            f"| {name}, simulated on the same trace | {len(values)}"
            f" | {statistics.median(values):.2f} | {percentile(values, 0.95):.2f}"
            f" | {max(values):.2f} |"
        )
    ratio = percentile(simulated["hpa-style"], 0.95) / percentile(simulated["duotone"], 0.95)
    print(f"\np95 ratio hpa-style / duotone (simulated, same trace): {ratio:.1f}x")

    print(
        f"\nSteady load at capacity for {args.minutes:g} simulated minutes (queue 16 +-25 %,"
        " 4 replicas at 4 per replica)\n"
    )
    print("| algorithm | scale events | direction changes | mean replicas |")
    print("|---|---|---|---|")
    for name, (events, reversals, mean) in steady.items():
        print(f"| {name} | {events} | {reversals} | {mean:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
