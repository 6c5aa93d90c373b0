"""The launcher's pure parts: server command, environment, repository and backend layout."""

from __future__ import annotations

import codecs
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from duotone_contracts.tier import parse_tier_document
from duotone_runtime.cpu_threads import MODEL_THREADS_ENV, THREAD_POOL_ENV
from duotone_runtime.launcher import (
    RESTRICTED_APIS,
    STUB,
    ServeOptions,
    TritonInstall,
    TritonNotFoundError,
    find_tritonserver,
    loggable_command,
    model_parameters,
    prepare,
    prepare_backends,
    python_version_tag,
    server_command,
    server_environment,
    write_model_repository,
)
from duotone_runtime.settings import default_tier

pytestmark = pytest.mark.unit

OPTIONS = ServeOptions(
    tier=default_tier("efficient", "builtin://tiny"),
    device="cpu",
    address="127.0.0.1",
    http_port=18000,
    grpc_port=18001,
    metrics_port=18002,
    triton_http_port=19000,
    triton_grpc_port=19001,
    exit_timeout_secs=25,
)


@pytest.mark.parametrize(
    "flag",
    [
        pytest.param("--model-repository=/repo", id="repository"),
        pytest.param("--backend-directory=/backends", id="backend directory"),
        pytest.param("--strict-readiness=true", id="ready means the model is loaded"),
        pytest.param("--metrics-config=summary_latencies=true", id="latency quantiles"),
        pytest.param("--exit-timeout-secs=25", id="graceful exit timeout"),
        pytest.param("--http-port=19000", id="http port behind the gate"),
        pytest.param("--grpc-port=19001", id="grpc port behind the gate"),
        pytest.param("--http-address=127.0.0.1", id="http on loopback only"),
        pytest.param("--grpc-address=127.0.0.1", id="grpc on loopback only"),
        pytest.param("--metrics-port=18002", id="metrics port"),
        pytest.param("--metrics-address=127.0.0.1", id="metrics on the listen address"),
        pytest.param("--allow-gpu-metrics=false", id="no GPU metrics on cpu"),
        pytest.param(
            "--http-restricted-api=shared-memory,model-repository,model-config,trace,logging:"
            "duotone-restricted-api=k",
            id="http APIs the gate does not serve are restricted",
        ),
        pytest.param(
            "--grpc-restricted-protocol=shared-memory,model-repository,model-config,trace,"
            "logging:duotone-restricted-api=k",
            id="grpc APIs the gate does not serve are restricted",
        ),
    ],
)
def test_server_command_has(flag: str) -> None:
    command = server_command(
        OPTIONS, Path("/bin/tritonserver"), Path("/repo"), Path("/backends"), restricted_key="k"
    )
    assert command[0] == "/bin/tritonserver"
    assert flag in command


def test_triton_never_listens_on_the_public_http_or_grpc_ports() -> None:
    public = ServeOptions(tier=OPTIONS.tier, device="cpu", triton_http_port=1, triton_grpc_port=2)
    command = server_command(public, Path("/t"), Path("/r"), Path("/b"), restricted_key="k")
    assert "--http-address=127.0.0.1" in command
    assert "--metrics-address=0.0.0.0" in command
    assert not {"--http-port=8000", "--grpc-port=8001"} & set(command)


def test_each_server_gets_its_own_shared_memory_prefix() -> None:
    def prefix() -> str:
        command = server_command(OPTIONS, Path("/t"), Path("/r"), Path("/b"), restricted_key="k")
        return next(c for c in command if "shm-region-prefix-name" in c)

    assert prefix() != prefix()


def test_the_gates_apis_are_never_restricted() -> None:
    assert not {"health", "metadata", "inference", "statistics"} & set(RESTRICTED_APIS)


def test_the_restricted_api_key_is_not_logged() -> None:
    command = server_command(OPTIONS, Path("/t"), Path("/r"), Path("/b"), restricted_key="s3cret")
    shown = loggable_command(command)
    assert "s3cret" not in " ".join(shown)
    assert (
        "--http-restricted-api=shared-memory,model-repository,model-config,trace,logging:"
        "duotone-restricted-api=<random>"
    ) in shown
    assert len(shown) == len(command)


def test_every_start_gets_a_new_restricted_api_key(tmp_path: Path) -> None:
    install = TritonInstall(Path("/t"), tmp_path / "backends", "explicit")
    (tmp_path / "backends" / "python").mkdir(parents=True)
    (tmp_path / "backends" / "python" / STUB).write_text("")

    def key() -> str:
        command = prepare(OPTIONS, tmp_path / "work", install)
        flag = next(c for c in command if c.startswith("--http-restricted-api="))
        return flag.rsplit("=", 1)[1]

    first, second = key(), key()
    assert first != second
    assert len(first) >= 32


def test_prepare_clears_a_health_file_left_by_an_earlier_start(tmp_path: Path) -> None:
    install = TritonInstall(Path("/t"), tmp_path / "backends", "explicit")
    (tmp_path / "backends" / "python").mkdir(parents=True)
    (tmp_path / "backends" / "python" / STUB).write_text("")
    health = tmp_path / "model-health.json"
    health.write_text('{"failed": "device error"}')
    options = ServeOptions(tier=OPTIONS.tier, device="cpu", health_file=health)
    prepare(options, tmp_path / "work", install)
    assert not health.exists()
    assert model_parameters(options)["health_file"] == str(health)


def test_environment_puts_this_interpreter_first() -> None:
    install = TritonInstall(Path("/t"), Path("/b"), "explicit", library_dirs=(Path("/libs"),))
    env = server_environment(
        install, {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/old"}, cpu_threads=1
    )
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    paths = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert paths[0] == "/libs"
    assert paths[-1] == "/old"


def test_environment_sizes_the_thread_pools_from_the_chosen_count() -> None:
    """The stub inherits these: torch, OpenMP, MKL and OpenBLAS never size from the node."""
    install = TritonInstall(Path("/t"), Path("/b"), "explicit")
    env = server_environment(install, {"OMP_NUM_THREADS": "64", "HOME": "/tmp"}, cpu_threads=2)
    assert {k: env[k] for k in (MODEL_THREADS_ENV, *THREAD_POOL_ENV)} == {
        "DUOTONE_MODEL_THREADS": "2",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "OPENBLAS_NUM_THREADS": "2",
    }
    assert env["HOME"] == "/tmp", "the rest of the environment is kept"


@pytest.mark.parametrize(
    ("flags", "env", "logged"),
    [
        pytest.param(
            ["--cpu-threads=3"],
            {"DUOTONE_CPU_THREADS": "7"},
            "CPU threads: 3 from --cpu-threads 3; 3 per model instance",
            id="the flag wins over the variable",
        ),
        pytest.param(
            ["--instances=2"],
            {"DUOTONE_CPU_THREADS": "4"},
            "CPU threads: 4 from DUOTONE_CPU_THREADS=4; 2 per model instance",
            id="instances share the count",
        ),
    ],
)
def test_serve_logs_the_thread_count_and_its_source(
    tmp_path: Path, flags: list[str], env: dict[str, str], logged: str
) -> None:
    """`serve` chooses before anything else starts, and says what it chose and why."""
    argv = ["serve", "--model-source=builtin://tiny", "--device=cpu", "--dry-run", *flags]
    probe = f"import sys; from duotone_runtime.cli import main; sys.exit(main({argv!r}))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "TMPDIR": str(tmp_path)},
        check=False,
    )
    assert f"duotone-runtime: {logged}\n" in out.stdout, out.stderr


def test_repository_layout(tmp_path: Path) -> None:
    model_dir = write_model_repository(OPTIONS, tmp_path)
    assert model_dir == tmp_path / "duotone"
    assert (model_dir / "1" / "model.py").read_text().count("class TritonPythonModel") == 1
    config = (model_dir / "config.pbtxt").read_text()
    assert "kind: KIND_CPU" in config
    assert "max_batch_size: 16" in config


def test_repository_carries_the_effective_tier(tmp_path: Path) -> None:
    config = (write_model_repository(OPTIONS, tmp_path) / "config.pbtxt").read_text()
    after_key = config.split('key: "tier"', 1)[1]
    literal = re.search(r'string_value: "((?:[^"\\]|\\.)*)"', after_key)
    assert literal is not None
    tier_json = codecs.decode(literal.group(1), "unicode_escape")  # the pbtxt string's escapes
    assert parse_tier_document(tier_json) == OPTIONS.tier


def fake_wheel_layout(root: Path, with_stub: bool) -> TritonInstall:
    (root / "backends" / "python").mkdir(parents=True)
    (root / "backends" / "python" / "libtriton_python.so").write_bytes(b"so")
    stubs = root / "python_backend_stubs" / python_version_tag()
    stubs.mkdir(parents=True)
    (stubs / STUB).write_bytes(b"stub")
    if with_stub:
        (root / "backends" / "python" / STUB).write_bytes(b"in place")
    return TritonInstall(
        root / "bin" / "tritonserver", root / "backends", "test", stubs=stubs.parent
    )


def test_wheel_backend_is_copied_with_the_stub_of_this_python(tmp_path: Path) -> None:
    install = fake_wheel_layout(tmp_path / "wheel", with_stub=False)
    backends = prepare_backends(install, tmp_path / "work")
    assert (backends / "python" / STUB).read_bytes() == b"stub"
    assert (backends / "python" / "libtriton_python.so").read_bytes() == b"so"


def test_container_backend_is_used_in_place(tmp_path: Path) -> None:
    install = fake_wheel_layout(tmp_path / "container", with_stub=True)
    assert prepare_backends(install, tmp_path / "work") == install.backends


def test_explicit_binary_must_be_executable(tmp_path: Path) -> None:
    with pytest.raises(TritonNotFoundError, match="not an executable file"):
        find_tritonserver(tmp_path / "missing")


def test_importing_the_runtime_loads_no_heavy_stack() -> None:
    """The launcher and the pure core must not pull torch, diffusers or Triton clients."""
    modules = "duotone_runtime, duotone_runtime.cli, duotone_runtime.launcher"
    heavy = ("torch", "diffusers", "transformers", "tritonclient", "numpy")
    probe = (
        f"import sys, {modules}, duotone_contracts.limits, duotone_runtime.batching; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == ""
