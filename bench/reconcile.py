"""Operator benchmark: apply N IMDs, time from each create to all its children existing.

Compared in the same run with a baseline: this process server-side applying the same rendered
children itself, one IMD at a time (the floor for the work, without the operator). Also reports
the time for all N to converge, the operator client's API requests per reconcile, and the
operator's resident memory idle, after N IMDs, and after deleting them.

    python bench/reconcile.py                   # 200 IMDs created at once (a burst)
    python bench/reconcile.py --interval 0.5    # 200 IMDs, one every 0.5 s
    python bench/reconcile.py --count 1000 --scaled-to-zero   # fleet scale on the kwok nodes
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from local_cluster import bench_cluster, percentile

from duotone_contracts.api import parse_imd
from duotone_operator.adapters.kubernetes import KubernetesCluster, client_configuration
from duotone_operator.render.children import render_children
from duotone_operator.render.objects import RenderSettings

ROOT = Path(__file__).resolve().parents[1]
CHILDREN_PER_IMD = 18
METRICS_PORT = 19391


def reconcile_summary(metrics: str) -> str:
    """Mean reconcile time and count, from the operator's own histogram."""
    values = {}
    requests = 0.0
    for line in metrics.splitlines():
        for name in (
            "duotone_operator_reconcile_duration_seconds_sum",
            "duotone_operator_reconcile_duration_seconds_count",
        ):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
        if line.startswith("duotone_operator_api_requests_total{"):
            requests += float(line.split()[-1])
    total = values.get("duotone_operator_reconcile_duration_seconds_sum", 0.0)
    count = values.get("duotone_operator_reconcile_duration_seconds_count", 0.0)
    mean = total / count if count else float("nan")
    per = requests / count if count else float("nan")
    return (
        f"operator: {count:.0f} reconciles, mean {mean:.2f} s each; "
        f"{requests:.0f} client API requests, {per:.1f} per reconcile"
    )


def manifest(name: str, *, scaled_to_zero: bool = False) -> dict[str, Any]:
    tier: dict[str, Any] = {
        "model": {"source": "builtin://tiny"},
        "defaults": {"steps": 2, "width": 64, "height": 64},
        "resources": {"gpus": 0, "cpu": "100m", "memory": "256Mi"},
    }
    if scaled_to_zero:  # tiers created at zero: only the router runs a pod
        tier["replicas"] = {"min": 0, "max": 1}
    return {
        "apiVersion": "duotone.io/v1alpha1",
        "kind": "ImageModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "runtime": {"image": "duotone-runtime:dev"},
            "tiers": {"efficient": tier, "flagship": tier},
            "router": {"replicas": 1, "resources": {"cpu": "100m", "memory": "128Mi"}},
        },
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_counts(core: k8s.CoreV1Api, apps: k8s.AppsV1Api, namespace: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    selector = "app.kubernetes.io/managed-by=duotone-operator"
    rbac, network = (
        k8s.RbacAuthorizationV1Api(core.api_client),
        k8s.NetworkingV1Api(core.api_client),
    )
    lists = (
        core.list_namespaced_service_account(namespace, label_selector=selector).items,
        rbac.list_namespaced_role(namespace, label_selector=selector).items,
        rbac.list_namespaced_role_binding(namespace, label_selector=selector).items,
        network.list_namespaced_network_policy(namespace, label_selector=selector).items,
        core.list_namespaced_config_map(namespace, label_selector=selector).items,
        core.list_namespaced_service(namespace, label_selector=selector).items,
        k8s.PolicyV1Api(core.api_client)
        .list_namespaced_pod_disruption_budget(namespace, label_selector=selector)
        .items,
        apps.list_namespaced_deployment(namespace, label_selector=selector).items,
    )
    for items in lists:
        for item in items:
            labels = item.metadata.labels if item.metadata else None
            owner = (labels or {}).get("app.kubernetes.io/instance", "")
            counts[owner] = counts.get(owner, 0) + 1
    return counts


def wait_until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def baseline(cluster: KubernetesCluster, namespace: str, count: int) -> list[float]:
    """Seconds to apply one IMD's rendered children directly, per IMD."""
    times = []
    for i in range(count):
        body = manifest(f"base{i:03d}")
        body["metadata"].update(namespace=namespace, uid=f"00000000-0000-4000-8000-{i:012d}")
        children = render_children(parse_imd(body), RenderSettings())
        started = time.monotonic()
        for child in children:
            # A fake owner uid: the garbage collector removes these children afterwards.
            cluster.apply(child)
        times.append(time.monotonic() - started)
    return times


def operator_phase(
    kubeconfig: Path,
    env: dict[str, str],
    state: Path,
    api: k8s.ApiClient,
    *,
    count: int,
    interval_s: float,
    scaled_to_zero: bool,
) -> tuple[list[float], tuple[float, float, float], float]:
    """Create `count` IMDs, one every `interval_s` (0: all at once), under a running operator;
    latencies and RSS idle/loaded/after."""
    core, apps, custom = k8s.CoreV1Api(api), k8s.AppsV1Api(api), k8s.CustomObjectsApi(api)
    group = ("duotone.io", "v1alpha1", "bench", "imagemodeldeployments")
    with (state / "operator.log").open("wb") as log:
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "duotone_operator",
                "--namespace=bench",
                f"--kubeconfig={kubeconfig}",
                "--log-format=text",
                "--health-port=0",
                f"--metrics-port={METRICS_PORT}",
                "--autoscale-interval-seconds=0",  # reconciling only, as in earlier figures
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        time.sleep(3)  # let the operator finish starting before reading its idle memory
        rss_idle = rss_mib(operator.pid)
        created: dict[str, float] = {}
        done: dict[str, float] = {}

        def all_done() -> bool:
            now = time.monotonic()
            for name, n in child_counts(core, apps, "bench").items():
                if n >= CHILDREN_PER_IMD and name in created and name not in done:
                    done[name] = now
            return len(done) == count

        for i in range(count):
            name = f"imd{i:03d}"
            custom.create_namespaced_custom_object(
                *group[:3], group[3], manifest(name, scaled_to_zero=scaled_to_zero)
            )
            created[name] = time.monotonic()
            if interval_s:
                next_create = created[name] + interval_s
                while time.monotonic() < next_create:
                    all_done()
                    time.sleep(0.2)

        wait_until(all_done, timeout_s=3600, what="every IMD's children")
        converged = max(done.values()) - min(created.values())
        rss_loaded = rss_mib(operator.pid)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics").read()
        print(reconcile_summary(metrics.decode()))
        for name in created:
            custom.delete_namespaced_custom_object(*group, name)
        wait_until(lambda: not child_counts(core, apps, "bench"), 1800, "garbage collection")
        time.sleep(5)
        rss_after = rss_mib(operator.pid)
    finally:
        operator.terminate()
        operator.wait(timeout=30)
    return [done[n] - created[n] for n in created], (rss_idle, rss_loaded, rss_after), converged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--baseline-count", type=int, default=20)
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="seconds between creates; 0 creates all at once (a burst)",
    )
    parser.add_argument(
        "--scaled-to-zero",
        action="store_true",
        help="tiers with replicas.min 0 (only the router runs a pod): fleet runs on 2 cores",
    )
    args = parser.parse_args()

    with bench_cluster() as cluster:
        api = k8s.ApiClient(client_configuration(str(cluster.kubeconfig)))
        for namespace in ("bench", "bench-baseline"):
            k8s.CoreV1Api(api).create_namespace(
                k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespace))
            )
        base = baseline(KubernetesCluster(api), "bench-baseline", args.baseline_count)
        latencies, (rss_idle, rss_loaded, rss_after), converged = operator_phase(
            cluster.kubeconfig,
            cluster.env,
            cluster.state,
            api,
            count=args.count,
            interval_s=args.interval,
            scaled_to_zero=args.scaled_to_zero,
        )

    p50, p95 = statistics.median(latencies), percentile(latencies, 0.95)
    b50 = statistics.median(base)
    pacing = f"one every {args.interval:g} s" if args.interval else "all at once"
    print(f"\nOperator: {args.count} IMDs ({pacing}), {CHILDREN_PER_IMD} children each\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| create -> all children, p50 | {p50:.2f} s |")
    print(f"| create -> all children, p95 | {p95:.2f} s |")
    print(f"| create -> all children, max | {max(latencies):.2f} s |")
    print(f"| first create -> last IMD complete | {converged:.1f} s |")
    print(f"| baseline: direct apply of one IMD's children, p50 (n={len(base)}) | {b50:.2f} s |")
    print(f"| ratio p50 operator / direct apply | {p50 / b50:.1f}x |")
    print(
        f"| operator RSS idle / after {args.count} / after deleting them | "
        f"{rss_idle:.0f} / {rss_loaded:.0f} / {rss_after:.0f} MiB |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
