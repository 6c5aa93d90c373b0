#!/usr/bin/env python3
"""`make demo`: the product on the local test bed, driven through the OpenAI SDK.

Starts the local control plane with its real node (hack/cluster-up.sh --real-node: the images
are built from the repository's Dockerfiles and loaded the first time), installs the Helm chart
(the operator runs as a pod from its image), applies examples/tiny-cpu.yaml and waits for it to
be Ready, then sends a request mix through the router pod (split, named tiers, quality hints,
jpeg and webp output, an image-to-image and an inpainting edit, a flagship burst, one invalid
request), then a load phase that makes the autoscaler scale the
efficient tier up (a real pod starts and enters the router's pool through its EndpointSlice)
and back down. Prints a table per tier, the scale events with their reasons and where the images
are; exits non-zero if any request other than the deliberate invalid one failed.

`--local` runs the data plane alone, without Kubernetes: the two tiers and the router as local
processes configured exactly as the operator configures them (`make demo-local`).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import sys
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import yaml
from PIL import Image

from duotone_contracts.api.validation import parse_imd
from duotone_contracts.metrics import ROUTER_BACKENDS
from duotone_testbed.cluster import RealCluster, poll
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
    output_format: str = "png"


def _png(image: Image.Image) -> tuple[str, bytes, str]:
    """A file as the SDK uploads it: (name, bytes, content type)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ("input.png", buffer.getvalue(), "image/png")


EDIT_IMAGE = _png(Image.linear_gradient("L").resize((64, 64)).convert("RGB"))
"""The image the demo edits: a 64x64 gradient."""
_MASK = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
_MASK.paste((0, 0, 0, 0), (16, 16, 48, 48))
EDIT_MASK = _png(_MASK)
"""Its mask: opaque (kept) but for a transparent square in the middle (changed)."""


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
        ("jpeg", {"prompt": "a harbour", "output_format": "jpeg", "output_compression": 80}),
        ("webp", {"prompt": "a meadow", "output_format": "webp", "output_compression": 80}),
        ("edit", {"prompt": "the same scene at night", "image": EDIT_IMAGE}),
        ("inpaint", {"prompt": "a red door", "image": EDIT_IMAGE, "mask": EDIT_MASK}),
        # Server-Sent Events: previews from the step-batched flagship, then the image.
        (
            "streamed",
            {
                "prompt": "a lighthouse forming",
                "quality": "hd",
                "stream": True,
                "partial_images": 2,
            },
        ),
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
            if arguments.get("stream"):
                return await streamed(client, label, arguments, started)
            if "image" in arguments:  # an edit: the SDK sends a multipart form
                raw = await client.images.with_raw_response.edit(**arguments)
            else:
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
            result.output_format or "png",
        )


async def streamed(
    client: openai.AsyncOpenAI, label: str, arguments: dict[str, Any], started: float
) -> Outcome:
    """A streamed request: its previews and its image (written out in that order); a stream
    that ends without its completed event counts as failed."""
    raw = await client.images.with_raw_response.generate(**arguments)
    files: list[bytes] = []
    completed = None
    async for event in raw.parse():
        files.append(base64.b64decode(event.b64_json))
        if event.type == "image_generation.completed":
            completed = event
    seconds = time.monotonic() - started
    print(f"  {label}: {len(files) - 1} preview(s), then the image, in {seconds:.1f}s")
    return Outcome(
        label,
        raw.headers.get("x-duotone-tier", "?"),
        raw.headers.get("x-duotone-route", "?"),
        raw.headers.get("x-duotone-degraded") == "true",
        200 if completed is not None else 0,
        seconds,
        files,
        completed.output_format if completed is not None else "png",
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
            INVALID_LABEL,
            {"prompt": "x", "extra_body": {"steps": 99, "tier": "efficient"}},
            limit,
        )
    )
    await client.close()
    return outcomes


INVALID_LABEL = "too-many-steps"


def unexpected(outcomes: list[Outcome]) -> list[Outcome]:
    """Every failed request except the deliberate invalid one (which must be refused with 422)."""
    return [
        o
        for o in outcomes
        if (o.label == INVALID_LABEL and o.status != 422)
        or (o.label != INVALID_LABEL and o.status != 200)
    ]


def write_pngs(outcomes: list[Outcome], out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for outcome in outcomes:
        for j, png in enumerate(outcome.images):
            name = f"{outcome.label}-{outcome.tier}-{j}.{outcome.output_format}"
            (out / name).write_bytes(png)
            written += 1
    return written


def report(outcomes: list[Outcome], out: Path) -> int:
    written = write_pngs(outcomes, out)
    print(f"==> {len(outcomes)} requests, {written} images in {out}")
    print(table(outcomes))
    failed = unexpected(outcomes)
    for outcome in failed:
        print(f"  unexpected: {outcome.label} answered {outcome.status}")
    print(f"==> unexpected failures: {len(failed)}")
    return 1 if failed else 0


def run_local(args: argparse.Namespace, manifest: dict[str, Any]) -> int:
    imd = parse_imd(manifest)
    print(f"==> starting the {', '.join(imd.spec.tiers.present())} tiers and the router (CPU)")
    started = time.monotonic()
    with LocalStack.from_imd(imd, args.workdir) as stack:
        assert stack.router is not None
        print(f"==> ready in {time.monotonic() - started:.0f}s; endpoint {stack.router.url}/v1")
        outcomes = asyncio.run(drive(stack.router.url, args.requests, args.concurrency))
    return report(outcomes, args.out)


def router_backends(metrics_url: str, tier: str) -> int:
    """The router's own count of ready pods in its pool for `tier` (its metrics endpoint)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as response:  # noqa: S310 - test bed
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(ROUTER_BACKENDS.name) and f'tier="{tier}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


async def load(url: str, concurrency: int, stop: asyncio.Event) -> list[Outcome]:
    """Efficient-tier requests from `concurrency` clients until `stop` is set."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="demo", max_retries=0)
    limit = asyncio.Semaphore(concurrency)
    outcomes: list[Outcome] = []

    async def worker(w: int) -> None:
        i = 0
        while not stop.is_set():
            arguments = {"prompt": f"load {w}-{i}", "extra_body": {"tier": "efficient", "steps": 4}}
            outcomes.append(await send(client, f"load-{w}-{i}", arguments, limit))
            i += 1

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    await client.close()
    return outcomes


async def load_phase(
    cluster: RealCluster, namespace: str, name: str, url: str, args: argparse.Namespace
) -> list[Outcome]:
    """Load until the efficient tier runs 2 ready pods that the router routes to, then stop."""
    stop = asyncio.Event()
    task = asyncio.create_task(load(url, args.load_concurrency, stop))
    started = time.monotonic()
    target = 2
    try:
        while time.monotonic() - started < args.load_timeout:
            _, ready = await asyncio.to_thread(cluster.replicas, namespace, name, "efficient")
            pool = await asyncio.to_thread(
                router_backends, cluster.router_metrics_url(namespace, name), "efficient"
            )
            if ready >= target and pool >= target:
                print(
                    f"    {time.monotonic() - started:.0f}s: efficient has {ready} ready pods, "
                    f"{pool} in the router's pool"
                )
                break
            await asyncio.sleep(1)
        else:
            print(f"    the efficient tier did not reach {target} pods in {args.load_timeout:.0f}s")
    finally:
        stop.set()
    return await task


def run_cluster(args: argparse.Namespace, manifest: dict[str, Any]) -> int:
    namespace = manifest["metadata"]["namespace"]
    name = manifest["metadata"]["name"]
    started = time.monotonic()
    print("==> test bed: control plane, fake GPU nodes, one real node (hack/cluster-up.sh)")
    cluster = RealCluster.up(ROOT, args.cluster_dir)
    print(f"    up in {time.monotonic() - started:.0f}s; KUBECONFIG={cluster.kubeconfig}")
    print("==> helm upgrade --install duotone charts/duotone (the operator runs as a pod)")
    cluster.install_operator()
    print(f"==> kubectl apply -n {namespace} -f {args.example.relative_to(ROOT)}")
    cluster.ensure_namespace(namespace)
    cluster.apply(manifest, namespace)
    poll(
        lambda: cluster.imd_condition(namespace, name) == "True",
        timeout_s=args.ready_timeout,
        what=f"imd/{name} Ready",
    )
    url = cluster.router_url(namespace, name)
    print(f"==> Ready after {time.monotonic() - started:.0f}s; endpoint {url}/v1 (router Service)")
    outcomes = asyncio.run(drive(url, args.requests, args.concurrency))
    print(table(outcomes))

    print(
        f"==> load phase: {args.load_concurrency} clients on the efficient tier until it runs 2 "
        "pods the router routes to (the mix may already have made the autoscaler start one)"
    )
    load_started = time.monotonic()
    loaded = asyncio.run(load_phase(cluster, namespace, name, url, args))
    print(table(loaded))
    print("==> load stopped; waiting for the autoscaler to scale the efficient tier back down")
    try:
        poll(
            lambda: cluster.replicas(namespace, name, "efficient")[0] <= 1,
            timeout_s=args.scale_down_timeout,
            what="the efficient tier back at 1 replica",
            every_s=1,
        )
        print(f"    back at 1 replica {time.monotonic() - load_started:.0f}s after the load began")
    except TimeoutError as error:
        print(f"    {error}")
    print("==> scale events")
    scaled = [
        e for e in cluster.events(namespace, name) if str(e.get("reason")).startswith("Scaled")
    ]
    for event in scaled:
        print(f"  {event.get('lastTimestamp') or ''} {event['reason']}: {event['message']}")
    status = report(outcomes + loaded, args.out)
    ups = [e for e in scaled if e["reason"] == "ScaledUp"]
    downs = [e for e in scaled if e["reason"] == "ScaledDown"]
    if not ups or not downs:
        print("==> the autoscaler did not scale the efficient tier both up and down")
        status = 1
    print(f"==> done in {time.monotonic() - started:.0f}s; the cluster keeps running:")
    print(f"    export KUBECONFIG={cluster.kubeconfig}; kubectl get imd,pods -n {namespace}")
    print("    make cluster-down stops it and leaves the host as it was")
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="the data plane alone, no Kubernetes")
    parser.add_argument("--example", type=Path, default=ROOT / "examples" / "tiny-cpu.yaml")
    parser.add_argument("--namespace", default="demo")
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output")
    parser.add_argument("--requests", type=int, default=40, help="unnamed requests in the mix")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--load-concurrency", type=int, default=12)
    parser.add_argument("--load-timeout", type=float, default=240)
    parser.add_argument("--ready-timeout", type=float, default=600)
    parser.add_argument("--scale-down-timeout", type=float, default=240)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo")
    parser.add_argument("--cluster-dir", type=Path, default=ROOT / ".cluster")
    args = parser.parse_args()

    manifest = yaml.safe_load(args.example.read_text())
    manifest["metadata"]["namespace"] = args.namespace
    if args.local:
        return run_local(args, manifest)
    return run_cluster(args, manifest)


if __name__ == "__main__":
    sys.exit(main())
