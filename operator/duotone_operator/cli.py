"""`duotone-operator`: run the reconciler (flags, or DUOTONE_* environment variables)."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import json
import logging
import os
import pwd
import socket
import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import kopf
from aiohttp import web
from kubernetes import client as k8s
from prometheus_client import start_http_server

from duotone_operator import handlers
from duotone_operator.adapters import telemetry
from duotone_operator.adapters.child_index import ChildIndex
from duotone_operator.adapters.cluster import ClusterError
from duotone_operator.adapters.kubernetes import KubernetesCluster, client_configuration
from duotone_operator.adapters.lease import LeaderElector
from duotone_operator.autoscaler import Autoscaler
from duotone_operator.policy.freshness import WatchFreshness
from duotone_operator.policy.leadership import LeaseTiming
from duotone_operator.render.objects import DEFAULT_ROUTER_IMAGE, RenderSettings

log = logging.getLogger("duotone.operator")


LOGIN_NAME_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")
"""What `getpass.getuser()` reads, in its order, before it falls back to the passwd database."""


def login_name_fallback(
    environ: Mapping[str, str], uid: int, passwd_name: str | None
) -> str | None:
    """The USER value that keeps `getpass.getuser()` from failing, or None when it works as is.

    Kopf names its peering identity with `getpass.getuser()`, which raises
    `KeyError: 'getpwuid(): uid not found: 10001'` when no login variable is set and the uid has
    no passwd entry (the chart's `runAsUser: 10001` under any image without that user).
    """
    if any(environ.get(name) for name in LOGIN_NAME_VARIABLES) or passwd_name is not None:
        return None
    return f"uid-{uid}"


def ensure_login_name(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set USER when neither the environment nor the passwd database names this process's user."""
    uid = os.getuid()
    try:
        passwd_name: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:
        passwd_name = None
    fallback = login_name_fallback(environ, uid, passwd_name)
    if fallback is not None:
        environ["USER"] = fallback


MALLOC_ARENAS = 2
"""glibc malloc arenas for the whole process. glibc's default (8 per core) gives each worker
thread a heap of its own that keeps what it freed; 2 bound that, at no measurable cost in speed
(docs/benchmarks.md has the same-run comparison)."""

M_ARENA_MAX = -8
"""glibc's `mallopt` parameter number for the arena limit (malloc.h)."""


def limit_malloc_arenas(
    arenas: int = MALLOC_ARENAS, environ: Mapping[str, str] = os.environ
) -> bool:
    """Cap glibc's malloc arenas before any worker thread starts; `MALLOC_ARENA_MAX` in the
    environment wins. False where nothing was set (the variable is set, or no glibc)."""
    if environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


def _env(name: str, default: str) -> str:
    return os.environ.get(f"DUOTONE_{name}", default)


def _peers(text: str) -> list[dict[str, Any]]:
    """A JSON list of NetworkPolicy peers (objects), e.g. `[{"namespaceSelector": {}}]`."""
    try:
        peers = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from error
    if not isinstance(peers, list) or not all(isinstance(p, dict) for p in peers):
        raise argparse.ArgumentTypeError("must be a JSON list of NetworkPolicy peer objects")
    return peers


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="duotone-operator",
        description="Reconcile ImageModelDeployments into two-tier image serving.",
    )
    parser.add_argument(
        "--namespace",
        action="append",
        default=[n for n in _env("NAMESPACES", "").split(",") if n],
        help="namespace to watch (repeat; env DUOTONE_NAMESPACES, comma-separated); "
        "none means all namespaces",
    )
    parser.add_argument("--metrics-port", type=int, default=int(_env("METRICS_PORT", "9090")))
    parser.add_argument("--health-port", type=int, default=int(_env("HEALTH_PORT", "8081")))
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=_env("LOG_FORMAT", "json" if os.environ.get("KUBERNETES_SERVICE_HOST") else "text"),
        help="json for clusters, text for terminals (default: json inside a pod)",
    )
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument(
        "--router-image",
        default=_env("ROUTER_IMAGE", "") or DEFAULT_ROUTER_IMAGE,
        help="router pods' image when an IMD names none (built from router/Dockerfile)",
    )
    parser.add_argument(
        "--exit-timeout-seconds", type=int, default=int(_env("EXIT_TIMEOUT_SECONDS", "30"))
    )
    parser.add_argument(
        "--network-policies",
        action=argparse.BooleanOptionalAction,
        default=_env("NETWORK_POLICIES", "true").lower() == "true",
        help="render a NetworkPolicy for each IMD's tier pods and router pods (default: on)",
    )
    parser.add_argument(
        "--scraper-namespace",
        action="append",
        default=[n for n in _env("SCRAPER_NAMESPACES", "").split(",") if n],
        help="namespace whose pods may scrape the tiers' and routers' metrics ports (repeat; "
        "env DUOTONE_SCRAPER_NAMESPACES, comma-separated); none means any namespace",
    )
    parser.add_argument(
        "--router-ingress-from",
        type=_peers,
        default=_peers(_env("ROUTER_INGRESS_FROM", "[]")),
        help="JSON list of NetworkPolicy peers that may call the routers' endpoint (env "
        "DUOTONE_ROUTER_INGRESS_FROM); [] means any source",
    )
    parser.add_argument(
        "--watch-timeout-seconds",
        type=int,
        default=int(_env("WATCH_TIMEOUT_SECONDS", "300")),
        help="server-side watch timeout; the watch is re-established at least this often",
    )
    parser.add_argument(
        "--watch-grace-seconds",
        type=float,
        default=float(_env("WATCH_GRACE_SECONDS", "90")),
        help="liveness fails when the watch lags the API by longer than this",
    )
    parser.add_argument(
        "--retry-base-seconds", type=float, default=float(_env("RETRY_BASE_SECONDS", "5"))
    )
    parser.add_argument(
        "--retry-max-seconds", type=float, default=float(_env("RETRY_MAX_SECONDS", "300"))
    )
    parser.add_argument("--workers", type=int, default=int(_env("WORKERS", "8")))
    parser.add_argument(
        "--autoscale-interval-seconds",
        type=float,
        default=float(_env("AUTOSCALE_INTERVAL_SECONDS", "2")),
        help="how often each IMD's tiers are re-evaluated; 0 switches the autoscaler off",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=_env("LEADER_ELECTION_NAMESPACE", ""),
        help="namespace of the coordination Lease that lets one of several replicas write "
        "(env DUOTONE_LEADER_ELECTION_NAMESPACE; the chart sets its own); empty: no election, "
        "this process is the only writer",
    )
    parser.add_argument(
        "--leader-election-lease-seconds",
        type=float,
        default=float(_env("LEADER_ELECTION_LEASE_SECONDS", "15")),
        help="how long a Lease lasts without renewal: a standby takes over within about this "
        "long after the leader dies (renewed every third of it)",
    )
    parser.add_argument(
        "--identity",
        default=_env("IDENTITY", "") or f"{socket.gethostname()}-{os.getpid()}",
        help="this replica's name in the Lease (default: host name and process id)",
    )
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


def watch_check_period(grace_seconds: float) -> float:
    """How often the background check lists IMDs: a third of the grace period, 1 to 30 s."""
    return max(1.0, min(30.0, grace_seconds / 3))


async def _check_watch_once(context: handlers.OperatorContext, namespaces: list[str]) -> None:
    """List IMD versions and compare them with what the watch delivered (`policy.freshness`).
    A failed list decides nothing: an API-server outage is not a dead watch, and restarting
    the operator would not bring the API server back."""
    try:
        listed = await asyncio.to_thread(context.cluster.list_imd_versions, namespaces)
    except ClusterError as exc:
        log.info("watch check skipped: %s", exc.message)
        return
    stale = context.freshness.check(listed, time.monotonic())
    telemetry.WATCH_STALE.set(len(stale))


async def _check_watch_forever(
    context: handlers.OperatorContext, namespaces: list[str], period_seconds: float
) -> None:
    """`_check_watch_once` every `period_seconds`, whatever the probes do."""
    while True:
        await _check_watch_once(context, namespaces)
        await asyncio.sleep(period_seconds)


async def _serve_health(context: handlers.OperatorContext, port: int) -> web.AppRunner:
    """/healthz fails only when the IMD watch lags the API server (the last background check's
    verdict: a probe makes no API call)."""

    async def healthz(_: web.Request) -> web.Response:
        stale = context.freshness.last_stale
        if stale:
            return web.Response(status=503, text=f"watch stale for {len(stale)} objects\n")
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 - probed by the kubelet
    return runner


async def run(args: argparse.Namespace) -> None:
    namespaces: list[str] = args.namespace
    index = ChildIndex()
    context = handlers.OperatorContext(
        cluster=KubernetesCluster(
            k8s.ApiClient(client_configuration(args.kubeconfig)), index=index
        ),
        children=index,
        kubeconfig=args.kubeconfig,
        render=RenderSettings(
            exit_timeout_seconds=args.exit_timeout_seconds,
            router_image=args.router_image,
            network_policies=args.network_policies,
            scraper_namespaces=tuple(dict.fromkeys(args.scraper_namespace)),
            router_ingress_from=tuple(args.router_ingress_from),
        ),
        freshness=WatchFreshness(grace_seconds=args.watch_grace_seconds),
        retry_base_seconds=args.retry_base_seconds,
        retry_max_seconds=args.retry_max_seconds,
        watch_server_timeout=args.watch_timeout_seconds,
        workers=args.workers,
    )
    handlers.register_child_watches()
    start_http_server(args.metrics_port)
    runner = await _serve_health(context, args.health_port)
    api_client = k8s.ApiClient(client_configuration(args.kubeconfig))
    elector = (
        LeaderElector(
            api_client,
            args.leader_election_namespace,
            args.identity,
            LeaseTiming.for_lease(args.leader_election_lease_seconds),
        )
        if args.leader_election_namespace
        else None
    )
    log.info(
        "watching %s; metrics on :%d, health on :%d; %s",
        ", ".join(namespaces) or "all namespaces",
        args.metrics_port,
        args.health_port,
        f"leader election as {args.identity}" if elector else "the only writer",
    )
    stop = asyncio.Event()
    background: list[asyncio.Task[None]] = []
    try:
        if elector is not None:
            await elector.acquire()
            background.append(asyncio.create_task(elector.hold(stop)))
        else:
            telemetry.LEADER.set(1)
        background += [
            asyncio.create_task(handlers.repair_forever(context)),
            asyncio.create_task(handlers.refresh_forever(context)),
            asyncio.create_task(
                _check_watch_forever(
                    context, namespaces, watch_check_period(args.watch_grace_seconds)
                )
            ),
        ]
        if args.autoscale_interval_seconds > 0:
            context.autoscaler = Autoscaler(context.cluster, observed=context.observed)
            background.append(
                asyncio.create_task(
                    context.autoscaler.run(context.imd_bodies, args.autoscale_interval_seconds)
                )
            )
        await kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=True,
            memo=kopf.Memo(context=context),
            stop_flag=stop,
        )
    finally:
        for task in background:
            task.cancel()
        await runner.cleanup()
        if context.autoscaler is not None:
            await context.autoscaler.close()
        if elector is not None and not elector.lost:
            await asyncio.to_thread(elector.release)
    if elector is not None and elector.lost:
        # Exit rather than linger: the restarted process stands by for the Lease again.
        raise SystemExit(
            "lost the operator Lease; exiting so that the new leader is the only writer"
        )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    limit_malloc_arenas()
    ensure_login_name()
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if not args.verbose:
        # Kopf logs every handled watch event at INFO; keep its warnings and errors only.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
