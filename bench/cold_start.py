#!/usr/bin/env python3
"""Cold start from zero on the real node: request to answer when the tier has no pod.

Starts (or reuses) the test bed with its real node (hack/cluster-up.sh --real-node), installs
the chart, deploys examples/tiny-cpu.yaml with the efficient tier at `replicas.min: 0` and a
short idle time, then `--wakes` times: waits until the tier is at zero, sends one request
through the router with the OpenAI SDK and times it. The baseline in the same run is the same
request to the awake tier right after each wake-up (the ratio is cold / warm).

    .venv/bin/python bench/cold_start.py [--wakes 5] [--cluster-dir .cluster]

The node has 2 cores: remove other deployments first (after `make demo`: `kubectl delete
namespace demo`), or the router pod cannot be scheduled.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import openai
import yaml

from duotone_testbed.cluster import RealCluster, poll

ROOT = Path(__file__).resolve().parent.parent
NAMESPACE = "bench-cold-start"
NAME = "cold"


def manifest() -> dict[str, Any]:
    imd: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "tiny-cpu.yaml").read_text())
    imd["metadata"]["name"] = NAME
    imd["spec"]["tiers"]["efficient"]["replicas"] = {"min": 0, "max": 1}
    imd["spec"]["autoscaling"] = {"scaleToZeroIdleSeconds": 5, "scaleDownStabilizationSeconds": 5}
    # A tier that sleeps at zero must allow a request to wait for a cold start.
    imd["spec"]["tiers"]["efficient"]["batching"]["requestTimeoutMs"] = 120000
    return imd


def timed_request(url: str) -> float:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="bench", max_retries=0, timeout=300)
    started = time.monotonic()
    client.images.generate(
        prompt="wake", response_format="b64_json", extra_body={"tier": "efficient"}
    )
    client.close()
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wakes", type=int, default=5)
    parser.add_argument("--cluster-dir", type=Path, default=ROOT / ".cluster")
    args = parser.parse_args()

    cluster = RealCluster.up(ROOT, args.cluster_dir)
    cluster.install_operator()
    cluster.ensure_namespace(NAMESPACE)
    cluster.apply(manifest(), NAMESPACE)
    poll(
        lambda: cluster.imd_condition(NAMESPACE, NAME) == "True",
        timeout_s=600,
        what=f"imd/{NAME} Ready",
    )
    url = cluster.router_url(NAMESPACE, NAME)
    cold: list[float] = []
    warm: list[float] = []
    for i in range(args.wakes):
        poll(
            lambda: cluster.replicas(NAMESPACE, NAME, "efficient") == (0, 0),
            timeout_s=300,
            what="the efficient tier at zero",
            every_s=1,
        )
        cold.append(timed_request(url))
        warm.append(timed_request(url))
        print(f"  wake {i + 1}: cold {cold[-1]:.1f} s, warm {warm[-1] * 1000:.0f} ms", flush=True)
    cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")

    print("| request | n | p50 s | max s | vs warm p50 |")
    print("|---|---|---|---|---|")
    warm_p50 = statistics.median(warm)
    for label, values in (("cold (tier at zero)", cold), ("warm (same tier, just woken)", warm)):
        p50 = statistics.median(values)
        print(
            f"| {label} | {len(values)} | {p50:.2f} | {max(values):.2f} | {p50 / warm_p50:.0f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
