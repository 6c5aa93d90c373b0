"""`duotone-runtime`: serve one tier with tritonserver.

    duotone-runtime serve --config /etc/duotone/tier.json
    duotone-runtime serve --tier efficient --model-source builtin://tiny --device cpu

Flags override the tier file. tritonserver runs as a child on loopback ports behind the drain
gate, which serves `--http-port` and `--grpc-port` (see gate.py). `--dry-run` writes the
repository and prints the server command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import typing
from collections.abc import Sequence
from pathlib import Path

from duotone_contracts import triton
from duotone_contracts.api.v1alpha1 import TIER_NAMES, DType
from duotone_contracts.tier import TierDocument, TierDocumentError, parse_tier_document
from duotone_runtime.cpu_threads import (
    CPU_THREADS_ENV,
    CpuThreadsError,
    affinity_count,
    choose_cpu_threads,
    read_cgroup_quota,
    threads_per_instance,
)
from duotone_runtime.gate import supervise
from duotone_runtime.launcher import (
    ServeOptions,
    TritonNotFoundError,
    find_tritonserver,
    free_port,
    loggable_command,
    prepare,
    server_environment,
)
from duotone_runtime.settings import default_device, default_tier, with_overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="duotone-runtime", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="write the model repository and run tritonserver behind the drain gate"
    )
    serve.add_argument("--config", type=Path, help="tier.json rendered by the operator")
    serve.add_argument("--tier", choices=TIER_NAMES, help="tier name")
    serve.add_argument("--model-source", help="pvc://, hf://, file:/// or builtin://tiny")
    serve.add_argument("--dtype", choices=typing.get_args(DType))
    serve.add_argument("--allow-download", action="store_true", default=None)
    serve.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if gpus > 0")
    serve.add_argument("--model-name", default=triton.DEFAULT_MODEL_NAME)
    serve.add_argument("--address", default="0.0.0.0", help="listen address of all endpoints")  # noqa: S104
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument(
        "--triton-http-port", type=int, default=0, help="tritonserver's own, on 127.0.0.1 (0: free)"
    )
    serve.add_argument(
        "--triton-grpc-port", type=int, default=0, help="tritonserver's own, on 127.0.0.1 (0: free)"
    )
    serve.add_argument("--exit-timeout-secs", type=int, default=30)
    serve.add_argument(
        "--tritonserver",
        type=Path,
        default=os.environ.get("DUOTONE_TRITONSERVER") or None,
        help="tritonserver binary (default: container, PATH, then the nvidia-pytriton wheel)",
    )
    serve.add_argument("--workdir", type=Path, help="where the repository is written")
    serve.add_argument("--pvc-root", type=Path, default=Path("/models"))
    serve.add_argument("--cache-dir", type=Path, help="builtin pipelines (default: workdir)")
    serve.add_argument(
        "--batch-invariant",
        choices=("auto", "on", "off"),
        default="auto",
        help="per-sample conv/norm/linear so a seed's bytes never depend on the batch "
        "(auto: on for cpu, off for cuda)",
    )
    serve.add_argument("--instances", type=int, default=1, help="model instances")
    serve.add_argument(
        "--cpu-threads",
        type=int,
        help=f"torch/OpenMP/MKL threads of the server, shared by its instances (default: "
        f"${CPU_THREADS_ENV}, else the pod's CPU quota, request or limit, else the affinity)",
    )
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.add_argument("--dry-run", action="store_true", help="print the command, do not run")
    return parser


def _tier(args: argparse.Namespace) -> TierDocument:
    if args.config is not None:
        tier = parse_tier_document(args.config.read_text())
    elif args.model_source is not None:
        tier = default_tier(args.tier or "efficient", args.model_source)
    else:
        raise TierDocumentError("give --config tier.json, or --model-source (and --tier)")
    return with_overrides(
        tier,
        name=args.tier,
        model_source=args.model_source,
        dtype=args.dtype,
        allow_download=args.allow_download,
    )


def serve(args: argparse.Namespace) -> int:
    tier = _tier(args)
    device = args.device or default_device(tier.spec)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="duotone-runtime-"))
    options = ServeOptions(
        tier=tier,
        device=device,
        model_name=args.model_name,
        address=args.address,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        triton_http_port=args.triton_http_port or free_port(),
        triton_grpc_port=args.triton_grpc_port or free_port(),
        exit_timeout_secs=args.exit_timeout_secs,
        pvc_root=args.pvc_root,
        cache_dir=args.cache_dir or workdir / "cache",
        batch_invariant=args.batch_invariant == "on"
        or (args.batch_invariant == "auto" and device == "cpu"),
        instance_count=args.instances,
        log_verbose=args.log_verbose,
        health_file=workdir / "model-health.json",
    )
    threads = choose_cpu_threads(
        flag=args.cpu_threads,
        environ=os.environ,
        quota=read_cgroup_quota(),
        affinity=affinity_count(),
    )
    per_instance = threads_per_instance(threads, options.instance_count)
    print(
        f"duotone-runtime: CPU threads: {threads.count} from {threads.source}; "
        f"{per_instance} per model instance",
        flush=True,
    )
    install = find_tritonserver(args.tritonserver)
    command = prepare(options, workdir, install)
    env = server_environment(install, os.environ, cpu_threads=per_instance)
    shown = shlex.join(loggable_command(command))
    print(f"duotone-runtime: tritonserver from {install.origin}: {shown}", flush=True)
    if args.dry_run:
        return 0
    return asyncio.run(supervise(command, env, options))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return serve(args)
    except (TierDocumentError, TritonNotFoundError, CpuThreadsError, OSError) as error:
        print(f"duotone-runtime: {error}", file=sys.stderr)
        return 2
