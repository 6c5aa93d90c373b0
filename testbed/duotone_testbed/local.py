"""A tier runtime as a local process on loopback ports (tests, benchmarks, demos).

`LocalServer(workdir, tier_document).start()` runs `python -m duotone_runtime serve` (the drain
gate and its tritonserver), waits for readiness by polling with a deadline, and stops it with
SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duotone_contracts import triton
from duotone_runtime.launcher import free_port
from duotone_testbed.clients import Sample, metric_sum, scrape_metrics


def wait_until(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Poll `condition` every 0.1 s until it holds; TimeoutError naming `what` past the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {deadline_s:.0f}s waiting for {what}")


def stop_process(
    process: subprocess.Popen[bytes],
    *,
    timeout_s: float,
    first: signal.Signals = signal.SIGTERM,
    group: bool = False,
) -> None:
    """Send `first`, wait up to `timeout_s`, then SIGKILL. With `group` (a process started
    with `start_new_session=True`) also kill what is left of its process group: Triton's
    Python backend stubs outlive a server that was SIGKILLed."""
    if process.poll() is None:
        process.send_signal(first)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def answers_ok(url: str) -> bool:
    """Whether a GET of `url` answers 200 now (False while nothing listens there)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - http only
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class ServerExitedError(RuntimeError):
    """The server process ended while it was expected to run."""


@dataclass
class LocalServer:
    """One `duotone-runtime serve` process: the gate on the public ports, tritonserver behind."""

    workdir: Path
    tier: dict[str, Any]
    """The tier document (`duotone_contracts.tier`) as a JSON value."""
    exit_timeout_secs: int = 30
    extra_args: Sequence[str] = ()
    cpu_threads: int | None = 1
    """`--cpu-threads`: 1 keeps several servers on a small machine from thrashing (each
    would otherwise size its pools from every core); None lets the runtime choose."""
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    triton_http_port: int = field(default_factory=free_port)
    """tritonserver's own ports behind the gate (benchmarks compare the two paths)."""
    triton_grpc_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def log(self) -> Path:
        return self.workdir / "server.log"

    def command(self) -> list[str]:
        config = self.workdir / "tier.json"
        return [
            sys.executable,
            "-m",
            "duotone_runtime",
            "serve",
            f"--config={config}",
            f"--workdir={self.workdir / 'server'}",
            f"--cache-dir={self.workdir.parent / 'cache'}",
            "--address=127.0.0.1",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--triton-http-port={self.triton_http_port}",
            f"--triton-grpc-port={self.triton_grpc_port}",
            f"--exit-timeout-secs={self.exit_timeout_secs}",
            *([] if self.cpu_threads is None else [f"--cpu-threads={self.cpu_threads}"]),
            *self.extra_args,
        ]

    def start(self, deadline_s: float = 180.0) -> LocalServer:
        """Start the process and wait until Triton reports the model ready."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "tier.json").write_text(json.dumps(self.tier))
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until(self._ready, deadline_s, f"readiness of the server at {self.http_url}")
        return self

    def log_tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise ServerExitedError(
                f"server exited with {self.process.returncode}:\n{self.log_tail()}"
            )
        # Triton opens its metrics port just after HTTP: wait for both.
        return self.is_ready() and answers_ok(self.metrics_url)

    def _answers_ok(self, path: str) -> bool:
        return answers_ok(f"http://{self.http_url}{path}")

    def is_ready(self) -> bool:
        """Whether /v2/health/ready answers 200 (strict readiness: the model is loaded)."""
        return self._answers_ok("/v2/health/ready")

    def model_is_ready(self) -> bool:
        """Whether the model itself reports ready (/v2/models/<name>/ready answers 200)."""
        return self._answers_ok(f"/v2/models/{triton.DEFAULT_MODEL_NAME}/ready")

    def metrics(self) -> list[Sample]:
        return scrape_metrics(self.metrics_url)

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(self.metrics(), name, **labels)

    def terminate(self) -> None:
        """SIGTERM, then wait past the exit timeout; SIGKILL only if it is still there (and
        its backend stubs in any case)."""
        if self.process is not None:
            stop_process(self.process, timeout_s=self.exit_timeout_secs + 30, group=True)
