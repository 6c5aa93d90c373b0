"""How many threads a server's torch, OpenMP and MKL pools get: the CPU its pod was given,
never the node's core count.

Two tier servers that each size their pools from every core thrash when both compute: a
16-request burst across both tiers of examples/tiny-cpu.yaml on 2 cores takes several times
longer, with timeouts, than with one thread each (`bench/mixed_burst.py`, docs/benchmarks.md).

`choose_cpu_threads` takes the first of, in order:
1. an explicit count: `--cpu-threads N`, else `DUOTONE_CPU_THREADS`;
2. the cgroup's CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`): what
   the kernel lets the container run;
3. the CPU request (downward API): what the pod was promised;
4. the CPU limit (downward API) only after it: a limit without a quota was most likely never
   set, and the downward API then reports the node's allocatable CPU;
5. the CPUs this process may run on (its affinity).
A fractional CPU rounds up (1.5 -> 2, 500m -> 1). Sources 2-4 are capped at the affinity count:
a 4-CPU quota on a 2-CPU cpuset gets 2 threads. The choice is pure; the readers below are the
thin adapters.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from duotone_contracts.tier import CPU_LIMIT_MILLICORES_ENV, CPU_REQUEST_MILLICORES_ENV

CPU_THREADS_ENV: Final = "DUOTONE_CPU_THREADS"
"""The explicit count when `--cpu-threads` is not given."""
MODEL_THREADS_ENV: Final = "DUOTONE_MODEL_THREADS"
"""Set by the launcher for tritonserver: the torch threads of each model instance (the Python
backend's stub inherits it and `initialize` applies it)."""
THREAD_POOL_ENV: Final = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""The native libraries' own pool sizes, set to the same count."""
DEFAULT_PERIOD_US: Final = 100_000
"""The kernel's CFS period when `cpu.max` gives none."""
CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
"""Inside a container, its own cgroup (a private cgroup namespace, or v1's bind mounts)."""


class CpuThreadsError(ValueError):
    """An explicit thread count that is not a whole number >= 1."""


@dataclass(frozen=True)
class CpuQuota:
    """A cgroup CPU quota: `quota_us` of CPU time every `period_us`."""

    quota_us: int
    period_us: int
    file: str
    """Where it was read, for the log: `cgroup v2 cpu.max` or `cgroup v1 cpu.cfs_quota_us`."""


@dataclass(frozen=True)
class CpuThreads:
    """The chosen count and where it came from (the start-up log says both)."""

    count: int
    source: str


def parse_cpu_max(text: str) -> CpuQuota | None:
    """cgroup v2 `cpu.max`: `<quota> <period>`, or `max <period>` for no quota."""
    quota, _, period = text.strip().partition(" ")
    if quota == "max":
        return None
    try:
        return _quota(int(quota), int(period or DEFAULT_PERIOD_US), "cgroup v2 cpu.max")
    except ValueError:
        return None


def parse_cfs_quota(quota_text: str, period_text: str) -> CpuQuota | None:
    """cgroup v1 `cpu.cfs_quota_us` (-1 for no quota) and `cpu.cfs_period_us`."""
    try:
        return _quota(int(quota_text), int(period_text), "cgroup v1 cpu.cfs_quota_us")
    except ValueError:
        return None


def _quota(quota: int, period: int, file: str) -> CpuQuota | None:
    return CpuQuota(quota, period, file) if quota > 0 and period > 0 else None


def read_cgroup_quota(root: Path = CGROUP_ROOT) -> CpuQuota | None:
    """This container's CPU quota under `root` (v2 first, then v1's cpu controller), if any."""
    with contextlib.suppress(OSError):
        if (root / "cpu.max").is_file():
            return parse_cpu_max((root / "cpu.max").read_text())
        for controller in (root / "cpu", root / "cpu,cpuacct"):
            quota, period = controller / "cpu.cfs_quota_us", controller / "cpu.cfs_period_us"
            if quota.is_file() and period.is_file():
                return parse_cfs_quota(quota.read_text(), period.read_text())
    return None


def affinity_count() -> int:
    """How many CPUs this process may run on (a cpuset limits it; a quota does not)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _explicit(value: str, what: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise CpuThreadsError(f"{what} must be a whole number of threads >= 1, got {value!r}")
    return count


def _millicores(environ: Mapping[str, str], name: str) -> int | None:
    """A downward-API CPU amount; None when unset, not a number, or 0 (none requested)."""
    try:
        value = int(environ.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def _ceiling(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def _pod_cpus(environ: Mapping[str, str], quota: CpuQuota | None) -> tuple[int, str] | None:
    """Whole CPUs from the quota, else the request, else the limit; with where from."""
    if quota is not None:
        source = f"{quota.file} {quota.quota_us}/{quota.period_us}"
        return _ceiling(quota.quota_us, quota.period_us), source
    for name, what in (
        (CPU_REQUEST_MILLICORES_ENV, "CPU request"),
        (CPU_LIMIT_MILLICORES_ENV, "CPU limit"),
    ):
        if (millicores := _millicores(environ, name)) is not None:
            return _ceiling(millicores, 1000), f"{what} {name}={millicores}"
    return None


def choose_cpu_threads(
    *, flag: int | None, environ: Mapping[str, str], quota: CpuQuota | None, affinity: int
) -> CpuThreads:
    """The server's thread count: explicit, quota, request, limit, affinity (module docstring)."""
    if flag is not None:
        return CpuThreads(_explicit(str(flag), "--cpu-threads"), f"--cpu-threads {flag}")
    if value := environ.get(CPU_THREADS_ENV):
        return CpuThreads(_explicit(value, CPU_THREADS_ENV), f"{CPU_THREADS_ENV}={value}")
    pod = _pod_cpus(environ, quota)
    if pod is None:
        return CpuThreads(max(1, affinity), f"CPU affinity ({affinity} CPUs)")
    cpus, source = pod
    if cpus > affinity >= 1:
        return CpuThreads(affinity, f"{source}, capped at the affinity's {affinity} CPUs")
    return CpuThreads(max(1, cpus), source)


def threads_per_instance(threads: CpuThreads, instances: int) -> int:
    """Each model instance is its own stub process computing at once: they share the count."""
    return max(1, threads.count // max(1, instances))


def thread_environment(threads: int) -> dict[str, str]:
    """What the launcher adds to tritonserver's environment (the stubs inherit it)."""
    return {MODEL_THREADS_ENV: str(threads), **dict.fromkeys(THREAD_POOL_ENV, str(threads))}
