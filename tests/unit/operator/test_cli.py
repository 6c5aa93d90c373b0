"""The operator's start-up: a uid without a passwd entry must not stop Kopf from starting."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from duotone_operator.cli import LOGIN_NAME_VARIABLES, login_name_fallback


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
