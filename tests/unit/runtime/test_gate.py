"""The drain gate's pure parts: which request is refused, answered or forwarded while draining."""

from __future__ import annotations

import signal

import pytest

from duotone_runtime.gate import (
    Route,
    exit_status,
    forwarded_headers,
    forwarded_metadata,
    grpc_route,
    http_route,
)

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
        ("GET", "/v2/models/duotone", Route.FORWARD),
        ("GET", "/v2/models/duotone/config", Route.FORWARD),
        ("GET", "/v2/models/duotone/stats", Route.FORWARD),
        ("GET", "/v2", Route.FORWARD),
        # A model called "ready" or "infer" is still a model, not an endpoint.
        ("GET", "/v2/models/ready", Route.FORWARD),
        ("GET", "/v2/models/infer/config", Route.FORWARD),
        ("GET", "/v2/models/duotone/infer", Route.FORWARD),
    ],
)
def test_http_route(method: str, path: str, route: Route) -> None:
    assert http_route(method, path) is route


@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("/inference.GRPCInferenceService/ServerReady", Route.READY),
        ("/inference.GRPCInferenceService/ModelReady", Route.READY),
        ("/inference.GRPCInferenceService/ModelInfer", Route.INFER),
        ("/inference.GRPCInferenceService/ModelStreamInfer", Route.INFER),
        ("/inference.GRPCInferenceService/ServerLive", Route.LIVE),
        ("/inference.GRPCInferenceService/ModelMetadata", Route.FORWARD),
        ("/inference.GRPCInferenceService/ModelStatistics", Route.FORWARD),
        ("/other.Service/ModelInfer", Route.FORWARD),
    ],
)
def test_grpc_route(method: str, route: Route) -> None:
    assert grpc_route(method) is route


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
    ("returncode", "status"),
    [(0, 0), (1, 1), (-signal.SIGKILL, 137), (-signal.SIGSEGV, 139)],
)
def test_exit_status_is_the_shells(returncode: int, status: int) -> None:
    assert exit_status(returncode) == status
