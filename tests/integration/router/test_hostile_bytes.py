"""Raw bytes against the running router: a hostile corpus gets only 4xx answers, every
connection an answer, no memory growth; chunked and slowly written bodies are answered
exactly like the same body in one piece."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from duotone_testbed import fuzz
from duotone_testbed.stack import LocalStack
from tests.integration.router.conftest import TIGHT, reconfigure, router_metric, triton_requests

KEY = "k-hostile-0123456789"
AUTHORIZATION = f"Bearer {KEY}"


TEMPLATE = {
    "prompt": "a red cube",
    "model": "no-such-model",
    "n": 1,
    "steps": 1,
    "seed": 7,
    "guidance_scale": 1.0,
    "size": "64x64",
}
"""Refused after parsing (unknown model) whatever single hostile value is spliced in, except
`model: null`, which makes it one cheap valid request."""

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def keyed(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The stack behind an API key with a rate limit no test reaches, and tier limits that make
    every valid request one cheap 64x64 image (the tiers themselves are unchanged)."""
    assert stack.router is not None
    keys = tmp_path_factory.mktemp("keys")
    (keys / "hostile").write_text(KEY)
    original = json.loads(json.dumps(stack.router.table))
    tiers = {
        tier: {
            **route,
            "limits": TIGHT,
            "defaults": {**route["defaults"], "steps": 1, "width": 64, "height": 64},
        }
        for tier, route in original["tiers"].items()
    }
    reconfigure(
        stack,
        apiKeysPath=str(keys),
        rateLimit={"requestsPerMinutePerKey": 1000000, "burst": 100000},
        tiers=tiers,
    )
    try:
        yield stack
    finally:
        reconfigure(
            stack,
            apiKeysPath=original.get("apiKeysPath"),
            rateLimit=original["rateLimit"],
            tiers=original["tiers"],
        )


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def test_raw_bytes_fuzz_gets_only_4xx_answers_and_no_memory_growth(keyed: LocalStack) -> None:
    router = keyed.router
    assert router is not None
    assert router.process is not None
    cases = fuzz.corpus(20261122, template=TEMPLATE, authorization=AUTHORIZATION)
    assert len(cases) >= 1000
    assert {c.kind for c in cases} >= {
        "framing",
        "encodings",
        "numbers",
        "nesting",
        "headers",
        "unicode",
        "content-types",
        "methods-paths",
    }
    counted = {
        s: router_metric(keyed, "duotone_router_requests_total", status=s)
        for s in ("401", "413", "415", "422")
    }
    model_work = triton_requests(keyed)
    rss_before = _rss_bytes(router.process.pid)

    exchanges = [fuzz.send("127.0.0.1", router.port, case.data, timeout_s=30) for case in cases]

    rss_after = _rss_bytes(router.process.pid)
    histogram = fuzz.histogram(exchanges)
    print(
        f"\nraw-bytes fuzz: {len(cases)} requests, {sum(len(c.data) for c in cases)} bytes; "
        f"statuses {histogram}; router RSS {rss_before / MIB:.1f} -> {rss_after / MIB:.1f} MiB"
    )
    dropped = [
        (c.kind, c.name, e.error) for c, e in zip(cases, exchanges, strict=True) if e.status is None
    ]
    assert dropped == []
    server_errors = [
        (c.kind, c.name, e.status)
        for c, e in zip(cases, exchanges, strict=True)
        if e.status is not None and e.status >= 500
    ]
    assert server_errors == []
    assert rss_after - rss_before < 50 * MIB
    # 401, 413, 415 and 422 come only from the generations handler, which counts each one.
    for status, before in counted.items():
        answered = sum(1 for e in exchanges if e.status == int(status))
        assert answered > 0, status
        assert router_metric(keyed, "duotone_router_requests_total", status=status) == (
            before + answered
        ), status
    # Only `model: null` spliced into the template is a valid request: a handful at most.
    assert triton_requests(keyed) - model_work <= 5


# ---------------------------------------------------------------------------- framing


def _request(body: bytes, framing: str) -> bytes:
    headers = [(b"Authorization", AUTHORIZATION.encode())]
    if framing == "chunked in two":
        middle = len(body) // 2
        return fuzz.http_request(
            body,
            path=b"/v1/images/generations",
            headers=headers,
            framing="chunked",
            chunks=[fuzz.chunked([body[:middle], body[middle:]])],
        )
    return fuzz.http_request(body, path=b"/v1/images/generations", headers=headers)


def _exchange(port: int, data: bytes, piece: int | None = None) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of one request, written whole or `piece` bytes at a time with a
    pause between writes (a slow client)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if piece is None:
            connection.sendall(data)
        else:
            for start in range(0, len(data), piece):
                connection.sendall(data[start : start + piece])
                time.sleep(0.005)  # the client is slow; nothing waits on this
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def _shape(status: int, answer: dict[str, Any]) -> Any:
    if status != 200:
        return answer
    return {"images": len(answer["data"]), "format": answer["output_format"]}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(
            {"prompt": "a red cube", "model": "no-such-model"}, 404, id="unknown model: 404"
        ),
        pytest.param({"prompt": "a red cube", "steps": 99}, 422, id="steps over the limit: 422"),
        pytest.param(
            {"prompt": "a red cube", "tier": "efficient", "steps": 1, "size": "64x64", "seed": 3},
            200,
            id="valid tiny request: 200",
        ),
    ],
)
@pytest.mark.parametrize(
    ("framing", "piece"),
    [
        pytest.param("chunked in two", None, id="chunked in two chunks"),
        pytest.param("length", 7, id="written 7 bytes at a time"),
        pytest.param("chunked in two", 5, id="chunked and written 5 bytes at a time"),
    ],
)
def test_chunked_and_slow_bodies_are_answered_like_one_piece(
    keyed: LocalStack, body: dict[str, Any], status: int, framing: str, piece: int | None
) -> None:
    assert keyed.router is not None
    port = keyed.router.port
    raw = json.dumps(body).encode()
    whole = _exchange(port, _request(raw, "length"))
    framed = _exchange(port, _request(raw, framing), piece)
    assert whole[0] == status
    assert framed[0] == whole[0]
    assert _shape(*framed) == _shape(*whole)
