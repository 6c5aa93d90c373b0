"""A real Prometheus on loopback for tests (Debian's `prometheus` package; `make tools`).

It scrapes the given targets every second with the labels a ServiceMonitor would attach
(`namespace`, `service`), so the operator's PromQL selects them as it would in a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from duotone_runtime.launcher import free_port
from duotone_testbed.local import stop_process
from tests.support.cluster import wait_for


@dataclass(frozen=True)
class ScrapeTarget:
    address: str
    """host:port serving /metrics."""
    labels: Mapping[str, str]
    """Target labels; `__meta_*` ones exist only for `relabel_configs`, as in service discovery."""
    relabel_configs: Sequence[Mapping[str, Any]] = ()
    honor_labels: bool = False
    metrics_path: str = "/metrics"


def prometheus_binary() -> str:
    found = os.environ.get("DUOTONE_PROMETHEUS") or shutil.which("prometheus")
    if not found:
        pytest.fail("prometheus not found: run `make tools` (Debian's prometheus package)")
    return found


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result of an instant query (raises on a query error)."""
        address = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        with urllib.request.urlopen(address, timeout=5) as response:  # noqa: S310 - loopback
            payload = json.load(response)
        if payload["status"] != "success":
            raise AssertionError(f"{promql}: {payload}")
        result: list[dict[str, Any]] = payload["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        stop_process(self.process, timeout_s=15)


def start_prometheus(
    workdir: Path,
    targets: Sequence[ScrapeTarget],
    interval: str = "1s",
    rule_files: Sequence[Path] = (),
) -> Prometheus:
    """Start Prometheus scraping `targets` (and evaluating `rule_files`); returns once every
    target has been scraped."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": f"target-{index}",
                "honor_labels": t.honor_labels,
                "metrics_path": t.metrics_path,
                "static_configs": [{"targets": [t.address], "labels": dict(t.labels)}],
                "relabel_configs": [dict(r) for r in t.relabel_configs],
            }
            for index, t in enumerate(targets)
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(process, port, log_path)

    def scraped() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{prometheus.log()}")
        try:
            up = prometheus.query("up == 1")
        except OSError:
            return False
        return len(up) == len(targets)

    try:
        wait_for(scraped, timeout_s=60, what="prometheus to scrape every target")
    except BaseException:
        prometheus.stop()
        raise
    return prometheus
