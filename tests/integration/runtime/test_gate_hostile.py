"""The drain gate against hostile clients, on a real runtime (gate + tritonserver + tiny model).

Fuzz runs print their status histograms and the gate's RSS before and after (`pytest -s`).
The gate is the `duotone-runtime serve` process; tritonserver is its child and not measured.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import grpc
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException
from tritonclient.utils import shared_memory as shm

from duotone_contracts import triton
from duotone_contracts.tier import parse_tier_document
from duotone_runtime.gate import GRPC_SERVICE
from duotone_runtime.message_limits import message_limits
from duotone_runtime.model_health import FAULT_ENV
from duotone_testbed import fuzz
from duotone_testbed.clients import client_inputs
from tests.integration.runtime.conftest import (
    STARTUP_DEADLINE_S,
    RuntimeServer,
    full,
    png_size,
    send,
    tiny_tier,
    wait_until,
)

pytestmark = pytest.mark.integration

MiB = 1 << 20
RSS_GROWTH_LIMIT = 50 * MiB
TIER = tiny_tier(steps=1, max_steps=8, max_size=128)
LIMITS = message_limits(parse_tier_document(json.dumps(TIER)).spec.limits)
QUICK = full("quick", steps=1)
"""One step at 64x64: tens of milliseconds."""
SLOW = full("slow", steps=8, width=128, height=128, num_images=2)
"""Several seconds on one thread: holds the only instance while the test acts."""


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (not its children)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def http_status(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)  # noqa: S310 - http only
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return int(error.code), bytes(error.read())


@pytest.fixture(scope="module")
def gate(start_server: Callable[..., RuntimeServer]) -> RuntimeServer:
    """One server for the fuzz runs and the API checks: they never stop it."""
    return start_server("hostile", TIER)


# ------------------------------------------------------------------------------ HTTP fuzz

REFUSED_HTTP = {
    "shm status": ("GET", "/v2/systemsharedmemory/status"),
    "shm register": ("POST", "/v2/systemsharedmemory/region/r/register"),
    "shm unregister": ("POST", "/v2/systemsharedmemory/region/r/unregister"),
    "cuda shm register": ("POST", "/v2/cudasharedmemory/region/r/register"),
    "cuda shm status": ("GET", "/v2/cudasharedmemory/status"),
    "repository index": ("POST", "/v2/repository/index"),
    "model load": ("POST", "/v2/repository/models/duotone/load"),
    "model unload": ("POST", "/v2/repository/models/duotone/unload"),
    "log settings": ("POST", "/v2/logging"),
    "trace settings": ("POST", "/v2/trace/setting"),
    "model trace settings": ("POST", "/v2/models/duotone/trace/setting"),
    "model config": ("GET", "/v2/models/duotone/config"),
}


def gate_cases() -> list[fuzz.FuzzCase]:
    """The gate's own surface: refused APIs, probes, metadata, odd inference framing."""
    cases = []
    for name, (method, path) in REFUSED_HTTP.items():
        for body in (b"", b'{"key": "/x", "offset": 0, "byte_size": 64}'):
            data = fuzz.http_request(body, method=method.encode(), path=path.encode())
            cases.append(fuzz.FuzzCase("refused", name, data))
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/duotone",
        "/v2/models/duotone/ready",
        "/v2/models/stats",
        "/v2/models/duotone/stats",
    ):
        data = fuzz.http_request(method=b"GET", path=path.encode(), content_type=None)
        cases.append(fuzz.FuzzCase("served", path, data))
    infer = b"/v2/models/duotone/infer"
    valid = json.dumps(
        {
            "inputs": [
                {"name": "PROMPT", "shape": [1, 1], "datatype": "BYTES", "data": ["a cat"]},
                {"name": "STEPS", "shape": [1, 1], "datatype": "INT32", "data": [1]},
            ]
        }
    ).encode()
    for length in (b"0", b"-1", b"99999999999999999999", b"abc", b"%d" % (len(valid) + 5), b"7"):
        headers = [(b"Inference-Header-Content-Length", length)]
        data = fuzz.http_request(valid + b"\x00\x01", path=infer, headers=headers)
        cases.append(fuzz.FuzzCase("binary", f"header length {length!r}", data))
    big = b'{"inputs": [{"name": "PROMPT", "data": ["' + b"x" * LIMITS.http_request_bytes + b'"]}]}'
    cases.append(
        fuzz.FuzzCase("limits", "body over the tier's limit", fuzz.http_request(big, path=infer))
    )
    for i in range(8):
        cases.append(
            fuzz.FuzzCase("served", f"a valid inference {i}", fuzz.http_request(valid, path=infer))
        )
    return cases


def test_http_fuzz_gets_no_server_error_and_no_dropped_connection(gate: RuntimeServer) -> None:
    template = {
        "inputs": [
            {"name": "PROMPT", "shape": [1, 1], "datatype": "BYTES", "data": ["a cat"]},
            {"name": "STEPS", "shape": [1, 1], "datatype": "INT32", "data": [1]},
        ]
    }
    # An unknown model: whatever parses is refused by Triton before any model work.
    cases = (
        fuzz.corpus(
            17,
            template=template,
            path="/v2/models/nosuch/infer",
            body_limit=LIMITS.http_request_bytes,
        )
        + gate_cases()
    )
    assert len(cases) >= 1000
    process: Any = gate.process
    host, port = "127.0.0.1", gate.http_port
    for case in cases[:50]:  # allocator and connection pools reach their working size
        fuzz.send(host, port, case.data)
    before = rss_bytes(process.pid)
    answers = [(case, fuzz.send(host, port, case.data)) for case in cases]
    after = rss_bytes(process.pid)
    histogram = fuzz.histogram([exchange for _, exchange in answers])
    print(
        f"\ngate HTTP fuzz: {len(cases)} requests, statuses {histogram}, "
        f"gate RSS {before / MiB:.1f} -> {after / MiB:.1f} MiB"
    )
    failed = [
        f"{case.kind}: {case.name}: {exchange.status or exchange.error}"
        for case, exchange in answers
        if exchange.status is None or exchange.status >= 500
    ]
    assert not failed, failed[:20]
    assert after - before < RSS_GROWTH_LIMIT
    refused = [e.status for c, e in answers if c.kind == "refused"]
    assert set(refused) == {403}, refused
    served = [e.status for c, e in answers if c.kind == "served"]
    assert set(served) == {200}, served
    assert process.poll() is None


# ------------------------------------------------------------------------------ gRPC fuzz

UNARY_SERVED = [
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelStatistics",
]
REFUSED_GRPC = [
    "ModelConfig",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
]
DATATYPES = ["BYTES", "INT32", "INT64", "FP32", "FP16", "BOOL", "UINT8", "", "NOPE", "FP64"]


def garbage_infer(rng: random.Random) -> bytes:
    """A well-formed ModelInferRequest with hostile contents."""
    request = service_pb2.ModelInferRequest(
        model_name=rng.choice(["duotone", "nosuch", "", "duotone" * 40]),
        model_version=rng.choice(["", "1", "2", "-1", "x"]),
        id=rng.choice(["", "r", "\u202e" * 20, "x" * 1000]),
    )
    for _ in range(rng.randint(0, 4)):
        tensor = request.inputs.add(
            name=rng.choice(["PROMPT", "STEPS", "WIDTH", "SEED", "X", "", "NUM_IMAGES"]),
            datatype=rng.choice(DATATYPES),
            shape=[rng.choice([-1, 0, 1, 2, 2**40, -(2**40)]) for _ in range(rng.randint(0, 3))],
        )
        pick = rng.randrange(4)
        if pick == 0:
            tensor.contents.bytes_contents.extend(
                rng.randbytes(rng.randint(0, 20)) for _ in range(2)
            )
        elif pick == 1:
            tensor.contents.int_contents.extend(rng.randint(-(2**31), 2**31 - 1) for _ in range(3))
        elif pick == 2:
            tensor.contents.fp32_contents.extend([float("nan"), float("inf"), 1e38])
        if rng.random() < 0.3:
            tensor.parameters["binary_data_size"].int64_param = rng.randint(-5, 2**40)
    if rng.random() < 0.5:
        request.raw_input_contents.extend(rng.randbytes(rng.randint(0, 64)) for _ in range(2))
    if rng.random() < 0.3:
        request.outputs.add(name=rng.choice(["IMAGES", "NOPE", ""]))
    if rng.random() < 0.3:
        request.parameters[
            rng.choice(["priority", "timeout", "sequence_id", "x"])
        ].int64_param = rng.randint(-(2**63), 2**63 - 1)
    return bytes(request.SerializeToString())


def odd_metadata(rng: random.Random) -> list[tuple[str, str | bytes]]:
    """Metadata a client may legally send but no server expects."""
    keys = [
        "x-request-id",
        "triton_grpc_error",
        "triton-grpc-protocol-duotone-restricted-api",
        "duotone-restricted-api",
        "authorization",
        "k" * 64,
        "a.b_c-d",
        "timeout",
        "x-bin-not",
    ]
    metadata: list[tuple[str, str | bytes]] = []
    for _ in range(rng.randint(1, 6)):
        if rng.random() < 0.3:
            metadata.append((f"trace-{rng.randint(0, 99)}-bin", rng.randbytes(rng.randint(0, 300))))
        else:
            value = "".join(chr(rng.randint(0x20, 0x7E)) for _ in range(rng.randint(0, 2000)))
            metadata.append((rng.choice(keys), value))
    return metadata


@dataclass(frozen=True)
class GrpcCase:
    kind: str
    method: str
    messages: tuple[bytes, ...]
    metadata: tuple[tuple[str, str | bytes], ...] = ()
    stream: bool = False


def valid_infer_request() -> bytes:
    """QUICK as tritonclient serialises it."""
    inputs = client_inputs(grpcclient, QUICK)
    request = service_pb2.ModelInferRequest(model_name=triton.DEFAULT_MODEL_NAME)
    for tensor in inputs:
        request.inputs.extend([tensor._get_tensor()])
        request.raw_input_contents.extend([tensor._get_content()])
    request.outputs.add(name=triton.IMAGES)
    return bytes(request.SerializeToString())


def grpc_cases(seed: int, count: int) -> list[GrpcCase]:
    rng = random.Random(seed)  # noqa: S311 - a reproducible corpus
    quick_bytes = valid_infer_request()
    cases: list[GrpcCase] = [GrpcCase("valid", "ModelInfer", (quick_bytes,)) for _ in range(5)]
    cases += [GrpcCase("valid", "ModelStreamInfer", (quick_bytes, quick_bytes), stream=True)]
    cases += [GrpcCase("refused", m, (rng.randbytes(rng.randint(0, 40)),)) for m in REFUSED_GRPC]
    while len(cases) < count:
        kind = rng.choice(
            [
                "unknown",
                "refused",
                "random bytes",
                "garbage infer",
                "oversized",
                "metadata",
                "stream",
            ]
        )
        if kind == "unknown":
            name = "".join(rng.choice("abcXYZ_019") for _ in range(rng.randint(1, 40)))
            method = rng.choice([f"{name}", f"/{name}.Svc/{name}", f"/inference.{name}/ModelInfer"])
            cases.append(GrpcCase(kind, method, (rng.randbytes(rng.randint(0, 30)),)))
        elif kind == "refused":
            cases.append(GrpcCase(kind, rng.choice(REFUSED_GRPC), (rng.randbytes(30),)))
        elif kind == "random bytes":
            data = rng.randbytes(rng.randint(0, 200))
            cases.append(GrpcCase(kind, rng.choice(UNARY_SERVED), (data,)))
        elif kind == "garbage infer":
            cases.append(GrpcCase(kind, "ModelInfer", (garbage_infer(rng),)))
        elif kind == "oversized":
            data = rng.randbytes(LIMITS.grpc_request_bytes + rng.randint(1, 100_000))
            cases.append(GrpcCase(kind, rng.choice(["ModelInfer", "ServerLive"]), (data,)))
        elif kind == "metadata":
            message = rng.choice([b"", quick_bytes[:0], garbage_infer(rng)])
            method = rng.choice(["ServerLive", "ModelMetadata", "ModelInfer", "LogSettings"])
            cases.append(GrpcCase(kind, method, (message,), tuple(odd_metadata(rng))))
        else:
            messages = tuple(
                rng.choice([garbage_infer(rng), rng.randbytes(rng.randint(0, 60))])
                for _ in range(rng.randint(0, 3))
            )
            cases.append(GrpcCase(kind, "ModelStreamInfer", messages, stream=True))
    return cases


def call(channel: grpc.Channel, case: GrpcCase) -> str:
    """The status name of one raw call."""
    method = case.method if case.method.startswith("/") else GRPC_SERVICE + case.method
    try:
        if case.stream:
            for _ in channel.stream_stream(method)(
                iter(case.messages), timeout=20, metadata=case.metadata
            ):
                pass
        else:
            channel.unary_unary(method)(case.messages[0], timeout=20, metadata=case.metadata)
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"
    return "OK"


def test_grpc_fuzz_gets_no_internal_error_and_the_gate_stays_up(gate: RuntimeServer) -> None:
    cases = grpc_cases(17, 1000)
    process: Any = gate.process
    channel = grpc.insecure_channel(gate.grpc_url)
    try:
        for case in cases[:50]:
            call(channel, case)
        before = rss_bytes(process.pid)
        results = [(case, call(channel, case)) for case in cases]
        after = rss_bytes(process.pid)
    finally:
        channel.close()
    codes = Counter(result.split(":")[0] for _, result in results)
    print(
        f"\ngate gRPC fuzz: {len(cases)} calls, statuses {dict(sorted(codes.items()))}, "
        f"gate RSS {before / MiB:.1f} -> {after / MiB:.1f} MiB"
    )
    internal = [
        f"{case.kind} {case.method}: {result}"
        for case, result in results
        if result.startswith(("INTERNAL", "UNKNOWN"))
    ]
    assert not internal, internal[:20]
    by_kind: dict[str, set[str]] = {}
    for case, result in results:
        by_kind.setdefault(case.kind, set()).add(result.split(":")[0])
    assert by_kind["valid"] == {"OK"}
    assert by_kind["refused"] == {"PERMISSION_DENIED"}
    assert by_kind["unknown"] == {"UNIMPLEMENTED"}
    assert by_kind["oversized"] == {"RESOURCE_EXHAUSTED"}
    assert after - before < RSS_GROWTH_LIMIT
    assert process.poll() is None
    (image,) = send(gate, QUICK)  # type: ignore[misc]
    assert png_size(image) == (64, 64)


# ------------------------------------------------------------------------------ shared memory


@pytest.fixture
def shm_region() -> Iterator[tuple[str, int]]:
    """A real system shared-memory region: registering it would succeed if it were allowed."""
    key, size = f"/duotone-gate-test-{os.getpid()}", 64
    handle = shm.create_shared_memory_region("gate-test", key, size)
    yield key, size
    shm.destroy_shared_memory_region(handle)


def test_shared_memory_registration_is_refused_over_both_protocols_and_at_triton(
    gate: RuntimeServer, shm_region: tuple[str, int]
) -> None:
    key, size = shm_region
    body = json.dumps({"key": key, "offset": 0, "byte_size": size}).encode()
    for port, refusal in (
        (gate.http_port, "serves only inference"),
        (gate.triton_http_port, "restricted"),
    ):
        base = f"http://127.0.0.1:{port}/v2"
        for method, path, data in (
            ("POST", "/systemsharedmemory/region/r/register", body),
            ("POST", "/cudasharedmemory/region/r/register", b'{"raw_handle": {"b64": "AA=="}}'),
            ("GET", "/systemsharedmemory/status", None),
            ("POST", "/repository/index", b"{}"),
            ("POST", "/logging", b'{"log_verbose_level": 1}'),
        ):
            status, answer = http_status(base + path, method, data)
            assert status == 403, (port, path, status, answer)
            assert refusal in answer.decode(), answer

    for url, code, refusal in (
        (gate.grpc_url, "StatusCode.PERMISSION_DENIED", "serves only inference"),
        (f"127.0.0.1:{gate.triton_grpc_port}", "StatusCode.UNAVAILABLE", "restricted"),
    ):
        client = grpcclient.InferenceServerClient(url)
        guess = {"duotone-restricted-api": "a guess"}
        try:
            for attempt in (
                partial(client.register_system_shared_memory, "r", key, size, headers=guess),
                partial(client.register_cuda_shared_memory, "r", b"\x00" * 64, 0, size),
                client.get_system_shared_memory_status,
                partial(client.unload_model, triton.DEFAULT_MODEL_NAME),
                partial(client.update_log_settings, {"log_verbose_level": 1}),
            ):
                with pytest.raises(InferenceServerException) as refused:
                    attempt()
                assert refused.value.status() == code, refused.value
                assert refusal in str(refused.value.message()), refused.value
        finally:
            client.close()
    # Nothing got through: the model still serves.
    assert gate.model_is_ready()
    status, answer = http_status(f"http://{gate.http_url}/v2/models/stats")
    assert status == 200, answer


# ------------------------------------------------------------------------------ drain


def executions(log: str) -> int:
    """Requests the model executed, from Triton's verbose log ("executing N requests")."""
    total = 0
    for line in log.splitlines():
        if "executing" in line and "requests" in line and "model duotone" in line:
            total += int(line.split("executing ")[1].split(" ")[0])
    return total


def test_a_stream_open_before_sigterm_gets_no_new_execution_after_it(
    runtime_stack: None, runtime_root: Path
) -> None:
    server = RuntimeServer(
        runtime_root / "drain-stream",
        tiny_tier(max_batch_size=1),
        60,
        extra_args=["--log-verbose=1"],
    )
    try:
        server.start(STARTUP_DEADLINE_S)
        results: Queue[tuple[Any, Any]] = Queue()
        client = grpcclient.InferenceServerClient(server.grpc_url)
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        outputs = [grpcclient.InferRequestedOutput(triton.IMAGES)]
        before = server.metric("duotone_execute_batch_requests_count")
        client.async_stream_infer(
            triton.DEFAULT_MODEL_NAME,
            client_inputs(grpcclient, SLOW),
            request_id="before",
            outputs=outputs,
        )
        wait_until(
            lambda: server.metric("duotone_execute_batch_requests_count") > before,
            30,
            "the request sent before SIGTERM to start executing",
        )
        # An HTTP request whose headers arrive now and whose body arrives after SIGTERM.
        late_http = socket.create_connection(("127.0.0.1", server.http_port))
        request = fuzz.http_request(
            json.dumps({"inputs": []}).encode(), path=b"/v2/models/duotone/infer"
        )
        late_http.sendall(request[:-5])

        process: Any = server.process
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: not server.is_ready(), 10, "readiness to drop after SIGTERM")
        client.async_stream_infer(
            triton.DEFAULT_MODEL_NAME,
            client_inputs(grpcclient, QUICK),
            request_id="after",
            outputs=outputs,
        )
        late_http.sendall(request[-5:])
        answer = late_http.recv(4096)
        late_http.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert triton.DRAINING_REFUSAL.encode() in answer, answer

        seen: list[tuple[Any, Any]] = []
        try:
            while len(seen) < 2:
                seen.append(results.get(timeout=60))
        except Empty:
            pass
        client.stop_stream()
        client.close()
        completed = [result for result, error in seen if error is None]
        errors = [error for _, error in seen if error is not None]
        assert [r.get_response().id for r in completed] == ["before"], seen
        images = completed[0].as_numpy(triton.IMAGES).reshape(-1)
        assert png_size(bytes(images[0])) == (128, 128)
        assert len(errors) == 1, seen
        assert errors[0].status() == "StatusCode.UNAVAILABLE", errors[0]
        assert triton.DRAINING_REFUSAL in str(errors[0].message())

        process.wait(timeout=90)
        assert process.returncode == 0, server.log_tail()
        log = server.log.read_text(errors="replace")
        assert executions(log) == 1, [line for line in log.splitlines() if "executing" in line]
    finally:
        server.terminate()


# ------------------------------------------------------------------------------ model health


def test_after_a_fatal_model_failure_the_gate_is_neither_ready_nor_live(
    start_server: Callable[..., RuntimeServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_ENV, "CUDA error: an illegal memory access was encountered")
    server = start_server("model-health", TIER)
    monkeypatch.delenv(FAULT_ENV)
    assert server.is_ready(), "the warm-up is not affected: the model loads and is ready"

    failed = send(server, QUICK)
    assert isinstance(failed, InferenceServerException), failed
    assert "illegal memory access" in str(failed.message()), failed

    wait_until(lambda: not server.is_ready(), 10, "readiness to drop after the failure")
    assert not server.model_is_ready()
    status, answer = http_status(f"http://{server.http_url}/v2/health/live")
    assert status == 503, answer
    assert b"device error" in answer, answer
    probe = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        assert not probe.is_server_ready()
        assert not probe.is_server_live()
        assert not probe.is_model_ready(triton.DEFAULT_MODEL_NAME)
    finally:
        probe.close()
    refused = send(server, QUICK)
    assert isinstance(refused, InferenceServerException), refused
    assert refused.status() == "StatusCode.UNAVAILABLE", refused
    assert triton.MODEL_FAILED_REFUSAL in str(refused.message()), refused
    assert "the model can no longer serve" in server.log_tail(200)
