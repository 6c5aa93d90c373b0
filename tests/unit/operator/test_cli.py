"""The operator's start-up (a uid without a passwd entry must not stop Kopf from starting) and
its liveness endpoint."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp
import pytest

from duotone_operator import cli
from duotone_operator.cli import LOGIN_NAME_VARIABLES, login_name_fallback
from duotone_operator.handlers import OperatorContext
from duotone_operator.policy.freshness import WatchFreshness
from duotone_runtime.launcher import free_port
from tests.fakes.cluster import FakeCluster
from tests.support.builders import imd


@pytest.mark.parametrize(
    ("environ", "passwd_name", "expected"),
    [
        pytest.param({}, None, "uid-10001", id="no login variable and no passwd entry: uid-10001"),
        pytest.param({"USER": ""}, None, "uid-10001", id="an empty USER counts as unset"),
        pytest.param({"USER": "duotone"}, None, None, id="USER set (the image's ENV): kept"),
        pytest.param({"LOGNAME": "ops"}, None, None, id="LOGNAME set: kept"),
        pytest.param({"USERNAME": "ops"}, None, None, id="USERNAME set: kept"),
        pytest.param({}, "app", None, id="the uid has a passwd entry: nothing to set"),
    ],
)
def test_login_name_fallback(
    environ: dict[str, str], passwd_name: str | None, expected: str | None
) -> None:
    assert login_name_fallback(environ, 10001, passwd_name) == expected


# Runs the real `main()` with the uid's passwd lookup failing as it does for uid 10001 in the
# operator image; `run` (the reconciler) is replaced by what Kopf does first: getpass.getuser().
ENTRY_POINT = """
import getpass, pwd

def no_entry(uid):
    raise KeyError(f"getpwuid(): uid not found: {uid}")

pwd.getpwuid = no_entry
from duotone_operator import cli

async def kopf_identity(args):
    print(getpass.getuser())

cli.run = kopf_identity
cli.main(["--log-format=text"])
"""


def test_main_makes_getuser_work_for_a_uid_without_passwd_entry() -> None:
    env = {k: v for k, v in os.environ.items() if k not in LOGIN_NAME_VARIABLES}
    done = subprocess.run(
        [sys.executable, "-c", ENTRY_POINT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"uid-{os.getuid()}"


def test_liveness_reads_the_background_verdict_and_an_api_outage_is_not_a_dead_watch() -> None:
    cluster = FakeCluster()
    body = cluster.create_imd(imd("sd").tier("efficient", gpus=0).build())
    context = OperatorContext(cluster=cluster, freshness=WatchFreshness(grace_seconds=0.0))

    async def scenario() -> list[int]:
        port = free_port()
        runner = await cli._serve_health(context, port)
        codes: list[int] = []
        try:
            async with aiohttp.ClientSession() as session:

                async def probe() -> int:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as answer:
                        return answer.status

                checker = asyncio.create_task(cli._check_watch_forever(context, [], 0.01))
                # The watch never delivered the IMD: after the grace period, the check says stale.
                for _ in range(300):
                    if context.freshness.last_stale:
                        break
                    await asyncio.sleep(0.01)
                calls = len(cluster.calls)
                codes.append(await probe())
                codes.append(await probe())
                assert len(cluster.calls) - calls <= 2, "a probe makes no API call"
                checker.cancel()

                context.freshness.delivered(
                    body["metadata"]["uid"], body["metadata"]["resourceVersion"]
                )
                context.freshness.check(cluster.list_imd_versions([]), 0.0)
                codes.append(await probe())
                # The API server goes away: lists fail, and liveness stays as it was.
                for _ in range(3):
                    cluster.fail("list_imd_versions", 503)
                    await cli._check_watch_once(context, [])
                codes.append(await probe())
        finally:
            await runner.cleanup()
        return codes

    assert asyncio.run(scenario()) == [503, 503, 200, 200]


_ARENAS_PROBE = """
import ctypes, ctypes.util, os, sys, tempfile, threading
from duotone_operator import cli
print(cli.limit_malloc_arenas(), flush=True)
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.fdopen.restype = ctypes.c_void_p
barrier = threading.Barrier(8)
def work():
    barrier.wait()  # every thread allocates at once: glibc gives each an arena if it may
    blocks = [libc.malloc(4096) for _ in range(2000)]
    barrier.wait()
    for block in blocks:
        libc.free(block)
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
with tempfile.TemporaryFile() as out:
    fp = libc.fdopen(os.dup(out.fileno()), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp))
    libc.fflush(ctypes.c_void_p(fp))
    out.seek(0)
    print(out.read().decode().count("<heap nr="))
"""


def _arenas(environ: dict[str, str]) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _ARENAS_PROBE],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    limited, heaps = done.stdout.split()
    return limited, int(heaps)


def test_the_operator_caps_glibc_malloc_arenas_unless_the_environment_says_otherwise() -> None:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    assert _arenas(environ) == ("True", cli.MALLOC_ARENAS)
    limited, heaps = _arenas({**environ, "MALLOC_ARENA_MAX": "6"})
    assert limited == "False", "the environment wins"
    assert cli.MALLOC_ARENAS < heaps <= 6
