"""Launching tritonserver for one tier: model repository, binary, backend, environment, command.

tritonserver listens on loopback ports behind the drain gate (`gate.py`), which serves the
pod's HTTP and gRPC ports; its metrics port is the pod's own. On SIGTERM the gate refuses new
requests and forwards the signal; `--exit-timeout-secs` bounds how long in-flight requests
may finish. Every Triton API the gate does not serve (shared memory, model repository, model
configuration, trace and log settings) is restricted in tritonserver itself behind a header
whose value is random per start, so not even a process that reaches the loopback ports can use
it.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import sys
import sysconfig
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from duotone_contracts import triton
from duotone_contracts.tier import TierDocument
from duotone_runtime.cpu_threads import thread_environment
from duotone_runtime.settings import Device
from duotone_runtime.triton_config import render_config_pbtxt

CONTAINER_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
"""Where the NVIDIA Triton container keeps the server (backends in /opt/tritonserver/backends)."""
STUB = "triton_python_backend_stub"
MODEL_FILE = Path(__file__).with_name("triton_model.py")


class TritonNotFoundError(RuntimeError):
    """No usable tritonserver; the message lists every place that was tried."""


@dataclass(frozen=True)
class TritonInstall:
    """A tritonserver binary and what it needs to run the Python backend."""

    binary: Path
    backends: Path
    """Triton's backend directory (holds `python/`)."""
    origin: str
    """How it was found: explicit, container, PATH or nvidia-pytriton."""
    library_dirs: tuple[Path, ...] = ()
    stubs: Path | None = None
    """`python_backend_stubs/` of the nvidia-pytriton wheel: its backend folder lacks the stub."""


@dataclass(frozen=True)
class ServeOptions:
    """Everything `serve` needs besides the tier."""

    tier: TierDocument
    device: Device
    model_name: str = triton.DEFAULT_MODEL_NAME
    address: str = "0.0.0.0"  # noqa: S104 - a pod serves its Service; tests pass 127.0.0.1
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    triton_http_port: int = 0
    """tritonserver's own HTTP port on 127.0.0.1, behind the gate (0: any free port)."""
    triton_grpc_port: int = 0
    exit_timeout_secs: int = 30
    pvc_root: Path = Path("/models")
    cache_dir: Path = Path("/tmp/duotone")  # noqa: S108 - an emptyDir in the pod
    batch_invariant: bool = False
    instance_count: int = 1
    log_verbose: int = 0
    health_file: Path | None = None
    """Where the model reports that it can no longer serve (`model_health.py`); the gate reads
    it. None: no health reporting."""


LOOPBACK = "127.0.0.1"

RESTRICTED_APIS = ("shared-memory", "model-repository", "model-config", "trace", "logging")
"""tritonserver's API categories the gate refuses; it serves health, metadata, inference and
read-only statistics (`gate.http_route`, `gate.grpc_route`)."""
RESTRICTED_API_HEADER = "duotone-restricted-api"
"""The header a restricted API asks for (gRPC: `triton-grpc-protocol-<this>`); its value is
random per start and known to no one, so the restricted APIs are closed, not guarded."""
_RESTRICTED_FLAGS = ("--http-restricted-api=", "--grpc-restricted-protocol=")


_HANDED_OUT: set[int] = set()
"""Ports `free_port` returned in this process: a child may not have bound one yet, so the
kernel could offer it again."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, never one this process was given before."""
    while True:
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _layout(binary: Path, origin: str) -> TritonInstall:
    root = binary.resolve().parent.parent
    stubs = root / "python_backend_stubs"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    return TritonInstall(
        binary=binary,
        backends=root / "backends",
        origin=origin,
        library_dirs=(libs,) if libs.is_dir() else (),
        stubs=stubs if stubs.is_dir() else None,
    )


def _pytriton_binary() -> Path | None:
    # find_spec locates the package without importing it (pytriton's import is heavy).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return (
        Path(next(iter(spec.submodule_search_locations))) / "tritonserver" / "bin" / "tritonserver"
    )


def find_tritonserver(explicit: Path | None = None) -> TritonInstall:
    """The first of: `explicit`, the NVIDIA container's server, `tritonserver` on PATH, the
    binary bundled in the nvidia-pytriton wheel (CPU machines)."""
    tried: list[str] = []
    if explicit is not None:
        if os.access(explicit, os.X_OK):
            return _layout(explicit, "explicit")
        raise TritonNotFoundError(f"--tritonserver {explicit} is not an executable file")
    candidates: list[tuple[str, Path | None]] = [
        ("container", CONTAINER_TRITONSERVER),
        ("PATH", Path(found) if (found := shutil.which("tritonserver")) else None),
        ("nvidia-pytriton", _pytriton_binary()),
    ]
    for origin, path in candidates:
        if path is not None and os.access(path, os.X_OK):
            return _layout(path, origin)
        tried.append(f"{origin}: {path or 'not found'}")
    raise TritonNotFoundError(
        "tritonserver not found; pass --tritonserver PATH, run in the NVIDIA Triton container, "
        "or install the runtime package (its nvidia-pytriton bundles a CPU-capable server). Tried: "
        + "; ".join(tried)
    )


def python_version_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def prepare_backends(install: TritonInstall, workdir: Path) -> Path:
    """A backend directory whose `python/` has the stub for this interpreter.

    The NVIDIA container ships it in place. The nvidia-pytriton wheel keeps one stub per
    Python version in `python_backend_stubs/<major.minor>/`, so the backend is copied to a
    writable folder with the matching stub (site-packages may be read-only).
    """
    if (install.backends / "python" / STUB).is_file():
        return install.backends
    if install.stubs is None:
        raise TritonNotFoundError(f"{install.backends}/python has no {STUB}")
    stub = install.stubs / python_version_tag() / STUB
    if not stub.is_file():
        raise TritonNotFoundError(f"no Python backend stub for Python {python_version_tag()}")
    target = workdir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for item in (install.backends / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, target / item.name)
    shutil.copy2(stub, target / STUB)
    return target.parent


def model_parameters(options: ServeOptions) -> dict[str, str]:
    """What `initialize` reads from the model config (the tier, device and paths)."""
    return {
        "tier": options.tier.to_json(),
        "device": options.device,
        "pvc_root": str(options.pvc_root),
        "cache_dir": str(options.cache_dir),
        "batch_invariant": "true" if options.batch_invariant else "false",
        "health_file": "" if options.health_file is None else str(options.health_file),
    }


def write_model_repository(options: ServeOptions, repository: Path) -> Path:
    """Write `<repository>/<model>/config.pbtxt` and `<model>/1/model.py`; returns the model dir."""
    model_dir = repository / options.model_name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    config = render_config_pbtxt(
        model_name=options.model_name,
        batching=options.tier.spec.batching,
        instance_kind="KIND_GPU" if options.device == "cuda" else "KIND_CPU",
        instance_count=options.instance_count,
        parameters=model_parameters(options),
    )
    (model_dir / "config.pbtxt").write_text(config)
    shutil.copy2(MODEL_FILE, model_dir / "1" / "model.py")
    return model_dir


def server_command(
    options: ServeOptions, binary: Path, repository: Path, backends: Path, *, restricted_key: str
) -> list[str]:
    """tritonserver's argument list (pure); `restricted_key` is the header value that the
    restricted APIs would ask for."""
    restricted = f"{','.join(RESTRICTED_APIS)}:{RESTRICTED_API_HEADER}={restricted_key}"
    return [
        str(binary),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--disable-auto-complete-config",
        f"--http-address={LOOPBACK}",
        f"--http-port={options.triton_http_port}",
        f"--grpc-address={LOOPBACK}",
        f"--grpc-port={options.triton_grpc_port}",
        f"--metrics-address={options.address}",
        f"--metrics-port={options.metrics_port}",
        "--allow-metrics=true",
        f"--allow-gpu-metrics={'true' if options.device == 'cuda' else 'false'}",
        "--metrics-config=summary_latencies=true",
        f"--exit-timeout-secs={options.exit_timeout_secs}",
        f"{_RESTRICTED_FLAGS[0]}{restricted}",
        f"{_RESTRICTED_FLAGS[1]}{restricted}",
        # A unique shared-memory prefix lets several servers share one host (tests, sidecars).
        f"--backend-config=python,shm-region-prefix-name=duotone-{uuid.uuid4().hex[:12]}",
        # Loading a real model can outlast the stub's default 30 s handshake.
        "--backend-config=python,stub-timeout-seconds=300",
        f"--log-verbose={options.log_verbose}",
    ]


def server_environment(
    install: TritonInstall, base: Mapping[str, str], *, cpu_threads: int
) -> dict[str, str]:
    """The server's environment: the stub must find this interpreter's libpython and packages,
    and its thread pools get `cpu_threads` each (`cpu_threads.py`), never one per node core.

    The stub embeds Python: it needs the interpreter's own libpython ahead of any system copy,
    the wheel's bundled libraries, and this environment's `bin` first on PATH (PYTHONPATH
    alone is not honoured).
    """
    env = dict(base) | thread_environment(cpu_threads)
    libdir = sysconfig.get_config_var("LIBDIR")
    library_path = [*map(str, install.library_dirs), *([libdir] if libdir else [])]
    if env.get("LD_LIBRARY_PATH"):
        library_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_path)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def loggable_command(command: list[str]) -> list[str]:
    """The server command with the restricted-API key blanked out, for the log (pure)."""
    return [
        arg.rsplit("=", 1)[0] + "=<random>" if arg.startswith(_RESTRICTED_FLAGS) else arg
        for arg in command
    ]


def prepare(options: ServeOptions, workdir: Path, install: TritonInstall) -> list[str]:
    """Write the repository and backend under `workdir` and clear a health file left by an
    earlier start; return the server command."""
    repository = workdir / "models"
    write_model_repository(options, repository)
    backends = prepare_backends(install, workdir)
    if options.health_file is not None:
        options.health_file.unlink(missing_ok=True)
    return server_command(
        options, install.binary, repository, backends, restricted_key=secrets.token_urlsafe(32)
    )
