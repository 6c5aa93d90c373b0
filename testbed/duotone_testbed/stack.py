"""Two tiers and a router as local processes on loopback (tests, benchmarks, `make demo`).

`LocalStack.from_imd(imd, workdir).start()` renders the same tier documents and routing table
the operator puts in ConfigMaps (its `render` package), starts one `duotone-runtime serve` per
tier pod and one `duotone-router` with a static backends file listing them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from duotone_contracts.api.v1alpha1 import ImageModelDeployment, TierName
from duotone_contracts.routing_table import ROUTING_TABLE_FILE
from duotone_contracts.tier import TIER_DOCUMENT_FILE
from duotone_operator.render.router import routing_table
from duotone_operator.render.tier import tier_config
from duotone_runtime.launcher import free_port
from duotone_testbed.local import (
    LocalServer,
    ServerExitedError,
    answers_ok,
    stop_process,
    wait_until,
)


@dataclass
class LocalRouter:
    """One `python -m duotone_router` process."""

    workdir: Path
    table: dict[str, Any]
    """router.json as the operator renders it."""
    backends: dict[str, list[str]]
    """tier -> gRPC addresses, written to backends.json."""
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    extra_args: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """The router's /metrics (a port of its own)."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def config_path(self) -> Path:
        return self.workdir / ROUTING_TABLE_FILE

    @property
    def backends_path(self) -> Path:
        return self.workdir / "backends.json"

    @property
    def log(self) -> Path:
        return self.workdir / "router.log"

    def write_table(self, table: dict[str, Any]) -> None:
        """Replace router.json atomically (as a ConfigMap volume update does)."""
        self.table = table
        _atomic_write(self.config_path, json.dumps(table, indent=2))

    def write_backends(self, backends: Mapping[str, Sequence[str]]) -> None:
        self.backends = {tier: list(addresses) for tier, addresses in backends.items()}
        _atomic_write(self.backends_path, json.dumps({"tiers": self.backends}))

    def start(self, deadline_s: float = 30.0) -> LocalRouter:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_table(self.table)
        self.write_backends(self.backends)
        command = [
            sys.executable,
            "-m",
            "duotone_router",
            f"--config={self.config_path}",
            f"--backends={self.backends_path}",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--metrics-port={self.metrics_port}",
            *self.extra_args,
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, deadline_s, f"readiness of the router at {self.url}")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise ServerExitedError(f"router exited with {self.process.returncode}:\n{tail}")
        return answers_ok(f"{self.url}/readyz")

    def terminate(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=15)


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)


@dataclass
class LocalStack:
    """Runtime servers per tier and a router in front of them."""

    workdir: Path
    imd: ImageModelDeployment
    pods: Mapping[TierName, int]
    servers: dict[TierName, list[LocalServer]] = field(default_factory=dict)
    router: LocalRouter | None = None
    extra_server_args: Sequence[str] = ()
    router_args: Sequence[str] = ()
    server_cpu_threads: int | None = 1
    """Threads of each server's pools (`LocalServer.cpu_threads`): one, as every server of
    the stack shares this machine's cores."""

    @classmethod
    def from_imd(
        cls,
        imd: ImageModelDeployment,
        workdir: Path,
        pods: Mapping[TierName, int] | None = None,
        router_args: Sequence[str] = (),
    ) -> LocalStack:
        present = imd.spec.tiers.present()
        pods = dict(pods) if pods else dict.fromkeys(present, 1)
        return cls(workdir, imd, pods, router_args=router_args)

    def tier_document(self, tier: TierName) -> dict[str, Any]:
        spec = self.imd.spec.tiers.present()[tier]
        document: dict[str, Any] = json.loads(tier_config(tier, spec)[TIER_DOCUMENT_FILE])
        return document

    def addresses(self) -> dict[str, list[str]]:
        return {tier: [s.grpc_url for s in servers] for tier, servers in self.servers.items()}

    def start_server(self, tier: TierName, index: int) -> LocalServer:
        server = LocalServer(
            self.workdir / f"{tier}-{index}",
            self.tier_document(tier),
            extra_args=self.extra_server_args,
            cpu_threads=self.server_cpu_threads,
        )
        self.servers.setdefault(tier, []).append(server)
        return server.start()

    def start(self) -> LocalStack:
        """Start every server (one after another: two cores) and then the router."""
        try:
            for tier, count in self.pods.items():
                for index in range(count):
                    self.start_server(tier, index)
            self.router = LocalRouter(
                self.workdir / "router",
                routing_table(self.imd).model_dump(mode="json"),
                self.addresses(),
                extra_args=self.router_args,
            ).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.router is not None:
            self.router.terminate()
        for servers in self.servers.values():
            for server in servers:
                server.terminate()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
