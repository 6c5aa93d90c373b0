"""The drain gate's pure parts: which request is served, refused, answered or forwarded."""

from __future__ import annotations

import signal

import pytest

from duotone_runtime.gate import (
    Route,
    exit_status,
    forwarded_headers,
    forwarded_metadata,
    grpc_options,
    grpc_route,
    http_route,
)
from duotone_runtime.message_limits import MessageLimits

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("GET", "/v2/health/ready", Route.READY),
        ("GET", "/v2/models/duotone/ready", Route.READY),
        ("GET", "/v2/models/duotone/versions/1/ready", Route.READY),
        ("POST", "/v2/models/duotone/infer", Route.INFER),
        ("POST", "/v2/models/duotone/versions/1/infer", Route.INFER),
        ("POST", "/v2/models/duotone/generate", Route.INFER),
        ("POST", "/v2/models/duotone/generate_stream", Route.INFER),
        ("GET", "/v2/health/live", Route.LIVE),
        pytest.param("GET", "/v2", Route.FORWARD, id="server metadata"),
        pytest.param("GET", "/v2/models/duotone", Route.FORWARD, id="model metadata"),
        ("GET", "/v2/models/duotone/versions/1", Route.FORWARD),
        pytest.param("GET", "/v2/models/stats", Route.FORWARD, id="statistics of all models"),
        ("GET", "/v2/models/duotone/stats", Route.FORWARD),
        ("GET", "/v2/models/duotone/versions/1/stats", Route.FORWARD),
        # A model called "ready" or "infer" is still a model, not an endpoint.
        ("GET", "/v2/models/ready", Route.FORWARD),
        ("GET", "/v2/models/infer/ready", Route.READY),
        pytest.param("GET", "/v2/models/duotone/config", Route.REFUSED, id="model config"),
        ("GET", "/v2/models/duotone/versions/1/config", Route.REFUSED),
        ("POST", "/v2/models/duotone/trace/setting", Route.REFUSED),
        pytest.param(
            "POST", "/v2/systemsharedmemory/region/r/register", Route.REFUSED, id="shm register"
        ),
        ("GET", "/v2/systemsharedmemory/status", Route.REFUSED),
        ("POST", "/v2/systemsharedmemory/region/r/unregister", Route.REFUSED),
        pytest.param(
            "POST", "/v2/cudasharedmemory/region/r/register", Route.REFUSED, id="cuda shm register"
        ),
        ("GET", "/v2/cudasharedmemory/status", Route.REFUSED),
        pytest.param("POST", "/v2/repository/index", Route.REFUSED, id="repository index"),
        ("POST", "/v2/repository/models/duotone/load", Route.REFUSED),
        ("POST", "/v2/repository/models/duotone/unload", Route.REFUSED),
        pytest.param("POST", "/v2/logging", Route.REFUSED, id="log settings"),
        ("GET", "/v2/logging", Route.REFUSED),
        pytest.param("POST", "/v2/trace/setting", Route.REFUSED, id="trace settings"),
        pytest.param("GET", "/metrics", Route.UNKNOWN, id="metrics live on their own port"),
        ("GET", "/", Route.UNKNOWN),
        ("GET", "/v1/models", Route.UNKNOWN),
        ("GET", "/v2/models/duotone/infer", Route.UNKNOWN),
        pytest.param("POST", "/v2/health/ready", Route.UNKNOWN, id="wrong method on a probe"),
        ("DELETE", "/v2/models/duotone", Route.UNKNOWN),
        ("GET", "/v2/models/duotone/versions/one/ready", Route.UNKNOWN),
        ("GET", "/v2/models/duotone/versions", Route.UNKNOWN),
        ("GET", "/v2/health", Route.UNKNOWN),
        ("POST", "/v2/models/duotone/infer/more", Route.UNKNOWN),
        pytest.param("GET", "//v2/health/ready", Route.UNKNOWN, id="empty segment"),
        pytest.param("GET", "/v2/health/ready/", Route.UNKNOWN, id="trailing slash"),
        pytest.param(
            "POST", "/v2/models/a%2F..%2Fx/infer", Route.UNKNOWN, id="escaped slash in a name"
        ),
        pytest.param(
            "POST", "/v2/models/../systemsharedmemory/infer", Route.UNKNOWN, id="dot segment"
        ),
        pytest.param("GET", "/v2/models/" + "m" * 129 + "/ready", Route.UNKNOWN, id="long name"),
    ],
)
def test_http_route(method: str, path: str, route: Route) -> None:
    assert http_route(method, path) is route


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("ServerReady", Route.READY),
        ("ModelReady", Route.READY),
        ("ModelInfer", Route.INFER),
        ("ModelStreamInfer", Route.INFER),
        ("ServerLive", Route.LIVE),
        ("ServerMetadata", Route.FORWARD),
        ("ModelMetadata", Route.FORWARD),
        pytest.param("ModelStatistics", Route.FORWARD, id="read-only statistics are served"),
        ("ModelConfig", Route.REFUSED),
        ("SystemSharedMemoryRegister", Route.REFUSED),
        ("SystemSharedMemoryUnregister", Route.REFUSED),
        ("SystemSharedMemoryStatus", Route.REFUSED),
        ("CudaSharedMemoryRegister", Route.REFUSED),
        ("CudaSharedMemoryUnregister", Route.REFUSED),
        ("CudaSharedMemoryStatus", Route.REFUSED),
        ("RepositoryIndex", Route.REFUSED),
        ("RepositoryModelLoad", Route.REFUSED),
        ("RepositoryModelUnload", Route.REFUSED),
        ("TraceSetting", Route.REFUSED),
        ("LogSettings", Route.REFUSED),
        pytest.param("SomethingNew", Route.UNKNOWN, id="a method added later is not served"),
    ],
)
def test_grpc_route(method: str, route: Route) -> None:
    assert grpc_route(f"/inference.GRPCInferenceService/{method}") is route


@pytest.mark.parametrize(
    "method",
    ["/other.Service/ModelInfer", "/inference.GRPCInferenceService", "", "ModelInfer"],
)
def test_grpc_methods_of_other_services_are_unknown(method: str) -> None:
    assert grpc_route(method) is Route.UNKNOWN


def test_hop_by_hop_headers_are_not_forwarded() -> None:
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": "120",
        "Content-Length": "4096",
        "Connection": "keep-alive",
        "Transfer-Encoding": "chunked",
        "Host": "pod:8000",
    }
    assert forwarded_headers(headers) == {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": "120",
    }


def test_transport_metadata_is_not_forwarded() -> None:
    metadata = [
        (":authority", "pod:8001"),
        ("user-agent", "grpc-python/1.70"),
        ("grpc-accept-encoding", "gzip"),
        ("triton_grpc_error", "true"),
        ("x-request-id", "abc"),
    ]
    assert forwarded_metadata(metadata) == [("triton_grpc_error", "true"), ("x-request-id", "abc")]
    assert forwarded_metadata(None) == []


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(("x-trace-bin", b"\x00\xff"), id="binary value"),
        pytest.param(("X-Upper", "v"), id="upper-case key"),
        pytest.param(("k", "line\nbreak"), id="control character"),
        pytest.param(("k", "\u00e9t\u00e9"), id="non-ASCII value"),
        pytest.param(("k", "v" * 4097), id="long value"),
        pytest.param(("k" * 65, "v"), id="long key"),
        pytest.param(
            ("triton-grpc-protocol-duotone-restricted-api", "guess"), id="restricted-API key"
        ),
    ],
)
def test_odd_metadata_is_not_forwarded(entry: tuple[str, str | bytes]) -> None:
    assert forwarded_metadata([entry, ("ok", "yes")]) == [("ok", "yes")]


def test_grpc_bounds_follow_the_tier_both_ways() -> None:
    limits = MessageLimits(http_request_bytes=3, grpc_request_bytes=100, response_bytes=5000)
    server, channel = grpc_options(limits)
    assert dict(server) == {
        "grpc.max_receive_message_length": 100,
        "grpc.max_send_message_length": 5000,
    }
    assert dict(channel) == {
        "grpc.max_send_message_length": 100,
        "grpc.max_receive_message_length": 5000,
    }


@pytest.mark.parametrize(
    ("returncode", "status"),
    [(0, 0), (1, 1), (-signal.SIGKILL, 137), (-signal.SIGSEGV, 139)],
)
def test_exit_status_is_the_shells(returncode: int, status: int) -> None:
    assert exit_status(returncode) == status
