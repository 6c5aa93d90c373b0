"""Sizing a server's thread pools from its pod's CPU: the sources, their order, cgroup files."""

from __future__ import annotations

from pathlib import Path

import pytest

from duotone_contracts.tier import CPU_LIMIT_MILLICORES_ENV, CPU_REQUEST_MILLICORES_ENV
from duotone_runtime.cpu_threads import (
    CPU_THREADS_ENV,
    CpuQuota,
    CpuThreads,
    CpuThreadsError,
    choose_cpu_threads,
    parse_cfs_quota,
    parse_cpu_max,
    read_cgroup_quota,
    thread_environment,
    threads_per_instance,
)

REQUEST = CPU_REQUEST_MILLICORES_ENV
LIMIT = CPU_LIMIT_MILLICORES_ENV
QUOTA_2 = CpuQuota(200_000, 100_000, "cgroup v2 cpu.max")
POD = {REQUEST: "3000", LIMIT: "5000"}
"""The pod's downward-API variables: request 3 CPUs, limit 5."""


@pytest.mark.parametrize(
    ("flag", "environ", "quota", "affinity", "count", "source"),
    [
        pytest.param(
            4,
            {CPU_THREADS_ENV: "6", **POD},
            QUOTA_2,
            16,
            4,
            "--cpu-threads 4",
            id="the flag beats everything",
        ),
        pytest.param(
            None,
            {CPU_THREADS_ENV: "6", **POD},
            QUOTA_2,
            16,
            6,
            "DUOTONE_CPU_THREADS=6",
            id="then DUOTONE_CPU_THREADS",
        ),
        pytest.param(32, {}, None, 2, 32, "--cpu-threads 32", id="an explicit count is not capped"),
        pytest.param(
            None,
            POD,
            QUOTA_2,
            16,
            2,
            "cgroup v2 cpu.max 200000/100000",
            id="the cgroup quota beats the downward API",
        ),
        pytest.param(
            None,
            {},
            CpuQuota(150_000, 100_000, "cgroup v1 cpu.cfs_quota_us"),
            16,
            2,
            "cgroup v1 cpu.cfs_quota_us 150000/100000",
            id="a fractional quota rounds up: 1.5 CPUs -> 2",
        ),
        pytest.param(
            None,
            {},
            CpuQuota(20_000, 100_000, "cgroup v2 cpu.max"),
            16,
            1,
            "cgroup v2 cpu.max 20000/100000",
            id="a fifth of a CPU still gets 1 thread",
        ),
        pytest.param(
            None,
            POD,
            None,
            16,
            3,
            "CPU request DUOTONE_CPU_REQUEST_MILLICORES=3000",
            id="no quota: the request, not the limit",
        ),
        pytest.param(
            None,
            {REQUEST: "500", LIMIT: "64000"},
            None,
            64,
            1,
            "CPU request DUOTONE_CPU_REQUEST_MILLICORES=500",
            id="500m requested -> 1, though limits.cpu reports the whole node",
        ),
        pytest.param(
            None,
            {REQUEST: "0", LIMIT: "5000"},
            None,
            16,
            5,
            "CPU limit DUOTONE_CPU_LIMIT_MILLICORES=5000",
            id="no request (0): the limit",
        ),
        pytest.param(
            None,
            {},
            None,
            2,
            2,
            "CPU affinity (2 CPUs)",
            id="nothing known: the CPUs this process may run on",
        ),
        pytest.param(
            None,
            {REQUEST: "junk"},
            None,
            2,
            2,
            "CPU affinity (2 CPUs)",
            id="an unreadable downward-API value is skipped",
        ),
        pytest.param(
            None,
            {},
            CpuQuota(400_000, 100_000, "cgroup v2 cpu.max"),
            2,
            2,
            "cgroup v2 cpu.max 400000/100000, capped at the affinity's 2 CPUs",
            id="a 4-CPU quota on a 2-CPU cpuset: 2",
        ),
    ],
)
def test_choose_cpu_threads(
    *,
    flag: int | None,
    environ: dict[str, str],
    quota: CpuQuota | None,
    affinity: int,
    count: int,
    source: str,
) -> None:
    chosen = choose_cpu_threads(flag=flag, environ=environ, quota=quota, affinity=affinity)
    assert chosen == CpuThreads(count, source)


@pytest.mark.parametrize(
    ("flag", "environ", "message"),
    [
        pytest.param(0, {}, "--cpu-threads must be .* got '0'", id="flag 0"),
        pytest.param(None, {CPU_THREADS_ENV: "two"}, "DUOTONE_CPU_THREADS", id="env not a number"),
        pytest.param(None, {CPU_THREADS_ENV: "-1"}, "DUOTONE_CPU_THREADS", id="env negative"),
    ],
)
def test_a_bad_explicit_count_is_refused(
    flag: int | None, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(CpuThreadsError, match=message):
        choose_cpu_threads(flag=flag, environ=environ, quota=None, affinity=2)


@pytest.mark.parametrize(
    ("text", "quota"),
    [
        pytest.param("150000 100000\n", CpuQuota(150_000, 100_000, "cgroup v2 cpu.max"), id="1.5"),
        pytest.param("max 100000\n", None, id="max: no quota"),
        pytest.param("50000", CpuQuota(50_000, 100_000, "cgroup v2 cpu.max"), id="no period"),
        pytest.param("", None, id="empty"),
    ],
)
def test_parse_cpu_max(text: str, quota: CpuQuota | None) -> None:
    assert parse_cpu_max(text) == quota


@pytest.mark.parametrize(
    ("quota_text", "period_text", "quota"),
    [
        pytest.param(
            "250000\n",
            "100000\n",
            CpuQuota(250_000, 100_000, "cgroup v1 cpu.cfs_quota_us"),
            id="2.5 CPUs",
        ),
        pytest.param("-1\n", "100000\n", None, id="-1: no quota"),
        pytest.param("x", "100000", None, id="not a number"),
    ],
)
def test_parse_cfs_quota(quota_text: str, period_text: str, quota: CpuQuota | None) -> None:
    assert parse_cfs_quota(quota_text, period_text) == quota


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        pytest.param({"cpu.max": "300000 100000\n"}, 3, id="v2: cpu.max"),
        pytest.param({"cpu.max": "max 100000\n"}, None, id="v2: max means no quota"),
        pytest.param(
            {"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"},
            2,
            id="v1: the cpu controller",
        ),
        pytest.param(
            {
                "cpu,cpuacct/cpu.cfs_quota_us": "100000\n",
                "cpu,cpuacct/cpu.cfs_period_us": "50000\n",
            },
            2,
            id="v1: cpu,cpuacct",
        ),
        pytest.param(
            {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
            None,
            id="v1: -1 means no quota",
        ),
        pytest.param(
            {"cpu.max": "max 100000\n", "cpu/cpu.cfs_quota_us": "100000\n"},
            None,
            id="v2 wins over v1 leftovers",
        ),
        pytest.param({}, None, id="no cgroup files"),
    ],
)
def test_read_cgroup_quota(tmp_path: Path, files: dict[str, str], cpus: int | None) -> None:
    quota = read_cgroup_quota(_write(tmp_path, files))
    assert (None if quota is None else quota.quota_us // quota.period_us) == cpus


@pytest.mark.parametrize(
    ("count", "instances", "each"),
    [
        pytest.param(4, 1, 4, id="one instance: all of it"),
        pytest.param(4, 2, 2, id="two instances share four"),
        pytest.param(1, 3, 1, id="never below one"),
    ],
)
def test_threads_per_instance(count: int, instances: int, each: int) -> None:
    assert threads_per_instance(CpuThreads(count, "test"), instances) == each


def test_thread_environment_sizes_every_pool() -> None:
    assert thread_environment(3) == {
        "DUOTONE_MODEL_THREADS": "3",
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        "OPENBLAS_NUM_THREADS": "3",
    }
