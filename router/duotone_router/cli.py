"""`duotone-router`: the OpenAI-compatible endpoint in front of the tiers.

    duotone-router --config /etc/duotone/router.json --port 8080            # in a cluster
    duotone-router --config router.json --backends backends.json --port 8080  # locally

In a cluster, tier pods come from EndpointSlices (the pod's ServiceAccount token); with
`--backends`, from a JSON file `{"tiers": {"efficient": ["127.0.0.1:8001"]}}`. Both files are
re-read when they change.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import prometheus_client

from duotone_contracts.routing_table import RoutingTableError, parse_routing_table
from duotone_router.app import Router, serve
from duotone_router.config import ConfigError
from duotone_router.discovery import (
    Discovery,
    EndpointSliceDiscovery,
    KubeAccess,
    StaticFileDiscovery,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duotone-router", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="router.json routing table")
    parser.add_argument("--host", default="0.0.0.0", help="listen address")  # noqa: S104
    parser.add_argument("--port", type=int, default=8080, help="the endpoint's port")
    parser.add_argument(
        "--metrics-port", type=int, default=9090, help="Prometheus metrics port (/metrics)"
    )
    parser.add_argument("--backends", type=Path, help="static backends file (local use)")
    parser.add_argument("--kube-api-url", help="API server URL (default: in-cluster)")
    parser.add_argument("--kube-token-file", type=Path, help="bearer token file")
    parser.add_argument("--kube-ca-file", type=Path, help="API server CA bundle")
    parser.add_argument("--namespace", help="EndpointSlice namespace (default: the table's)")
    parser.add_argument("--seed", type=int, help="seed the traffic split (reproducible tests)")
    parser.add_argument(
        "--log-level", default=os.environ.get("DUOTONE_LOG_LEVEL", "INFO"), help="logging level"
    )
    return parser


def _discovery(args: argparse.Namespace, namespace: str | None) -> Discovery:
    if args.backends is not None:
        return StaticFileDiscovery(args.backends)
    if args.kube_api_url is not None:
        if args.kube_token_file is None:
            raise SystemExit("duotone-router: --kube-token-file is required with --kube-api-url")
        access = KubeAccess(args.kube_api_url, args.kube_token_file, args.kube_ca_file)
    else:
        access = KubeAccess.in_cluster()
    target = args.namespace or namespace
    if target is None:
        raise SystemExit("duotone-router: no namespace: pass --namespace")
    return EndpointSliceDiscovery(access, target)


async def _run(args: argparse.Namespace) -> None:
    config = parse_routing_table(args.config.read_text())
    rng = random.Random(args.seed)  # noqa: S311 - a traffic split, not cryptography
    router = Router(args.config, _discovery(args, config.namespace), rng=rng)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await serve(router, args.host, args.port, args.metrics_port, stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(_run(args))
    except (RoutingTableError, ConfigError, OSError) as error:
        print(f"duotone-router: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
