"""Real tritonserver processes serving the tiny pipeline on CPU, started by the launcher.

One server is shared by the module-level tests that only send traffic; the queue and shutdown
tests start their own. Every wait polls with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient  # type: ignore[import-untyped]
import tritonclient.http as httpclient  # type: ignore[import-untyped]
from PIL import Image

from duotone_runtime.launcher import TritonNotFoundError, find_tritonserver
from duotone_testbed import local
from duotone_testbed.clients import ImageRequest, generate_grpc, generate_http

STARTUP_DEADLINE_S = 180.0


def tiny_tier(
    *,
    steps: int = 2,
    max_steps: int = 8,
    max_size: int = 256,
    max_batch_size: int = 8,
    max_queue_delay_ms: int = 20,
    max_queue_size: int = 64,
    request_timeout_ms: int = 20000,
    mode: str = "request",
) -> dict[str, Any]:
    """The operator's tier.json for a CPU tier serving builtin://tiny."""
    return {
        "name": "efficient",
        "spec": {
            "model": {"source": "builtin://tiny", "dtype": "float32"},
            "defaults": {"steps": steps, "guidanceScale": 0.0, "width": 64, "height": 64},
            "limits": {
                "maxSteps": max_steps,
                "maxWidth": max_size,
                "maxHeight": max_size,
                "maxGuidanceScale": 20,
                "maxImagesPerRequest": 4,
                "maxPromptLength": 200,
            },
            "batching": {
                "mode": mode,
                "maxBatchSize": max_batch_size,
                "maxQueueDelayMs": max_queue_delay_ms,
                "maxQueueSize": max_queue_size,
                "requestTimeoutMs": request_timeout_ms,
            },
            "resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"},
        },
    }


def wait_until(condition: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Poll `condition` until it holds; fail the test naming `what` after `deadline_s`."""
    try:
        local.wait_until(condition, deadline_s, what)
    except TimeoutError as error:
        pytest.fail(str(error))


def full(prompt: str, **values: Any) -> ImageRequest:
    """A request that sets every input, as the router sends them."""
    given: dict[str, Any] = {
        "negative_prompt": "",
        "steps": 2,
        "guidance_scale": 0.0,
        "width": 64,
        "height": 64,
        "seed": 0,
        "num_images": 1,
    }
    return ImageRequest(prompt, **(given | values))


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG file"
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def send(
    server: RuntimeServer, request: ImageRequest, via: str = "grpc"
) -> list[bytes] | Exception:
    """One request on its own connection (`via` "grpc" or "http"); the error is returned, not
    raised."""
    if via == "grpc":
        client = grpcclient.InferenceServerClient(server.grpc_url)
        generate = generate_grpc
    else:
        client = httpclient.InferenceServerClient(server.http_url)
        generate = generate_http
    try:
        return generate(client, request)
    except Exception as error:
        return error
    finally:
        client.close()


RuntimeServer = local.LocalServer


@pytest.fixture(scope="session")
def runtime_stack() -> None:
    """The runtime's heavy dependencies and a tritonserver must be present: no silent skip."""
    missing = [m for m in ("torch", "diffusers") if not importlib.util.find_spec(m)]
    if missing:
        pytest.fail(
            f"runtime tests need {', '.join(missing)}: install the runtime package "
            "(make install, or pip install ./contracts ./runtime)"
        )
    try:
        find_tritonserver()
    except TritonNotFoundError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def runtime_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime")


@pytest.fixture(scope="session")
def start_server(runtime_stack: None, runtime_root: Path) -> Iterator[Callable[..., RuntimeServer]]:
    """Start servers on demand; every one is stopped at the end of the session."""
    started: list[RuntimeServer] = []

    def start(name: str, tier: dict[str, Any], exit_timeout_secs: int = 30) -> RuntimeServer:
        server = RuntimeServer(runtime_root / name, tier, exit_timeout_secs)
        started.append(server)
        try:
            return server.start(STARTUP_DEADLINE_S)
        except (TimeoutError, local.ServerExitedError) as error:
            pytest.fail(f"{error}\n{server.log_tail()}")

    yield start
    for server in started:
        server.terminate()


@pytest.fixture(scope="session")
def server(start_server: Callable[..., RuntimeServer]) -> RuntimeServer:
    """The shared server: tiny pipeline, batches of up to 8, 20 ms batching window."""
    return start_server("shared", tiny_tier())


@pytest.fixture
def http_client(server: RuntimeServer) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(server.http_url, concurrency=16)
    yield client
    client.close()


@pytest.fixture
def grpc_client(server: RuntimeServer) -> Iterator[Any]:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()
