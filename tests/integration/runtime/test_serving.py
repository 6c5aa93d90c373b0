"""The tiny pipeline served by a real tritonserver on CPU, over real HTTP and gRPC clients."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException  # type: ignore[import-untyped]

from duotone_contracts import triton
from duotone_testbed.clients import ImageRequest, client_inputs, generate_grpc, generate_http, pngs
from tests.integration.runtime.conftest import RuntimeServer, full, png_size, send, wait_until

pytestmark = pytest.mark.integration

BUSY = ImageRequest("keeps the instance busy", steps=8, width=128, height=128, num_images=4)
"""Seconds of work on CPU: requests sent meanwhile queue up and form one batch after it.

Triton batches only requests that carry the same set of inputs, so each burst below sends the
same inputs in every request (the router always sends all of them)."""


def concurrently(
    server: RuntimeServer, requests: Sequence[ImageRequest]
) -> list[list[bytes] | Exception]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda r: send(server, r), requests))


def one_batch_after_busy(
    server: RuntimeServer, requests: Sequence[ImageRequest]
) -> tuple[list[list[bytes] | Exception], float, float]:
    """Send `requests` while BUSY runs, so they queue and execute as one batch.

    Returns the results and the changes of Triton's execution and inference counts.
    """
    executions = server.metric("nv_inference_exec_count")
    inferences = server.metric("nv_inference_count")
    before_requests = server.metric("nv_inference_request_success") + server.metric(
        "nv_inference_request_failure"
    )
    started = server.metric("duotone_execute_batch_requests_count")
    busy: list[Any] = []
    worker = threading.Thread(target=lambda: busy.append(send(server, BUSY)))
    worker.start()
    wait_until(
        lambda: server.metric("duotone_execute_batch_requests_count") > started,
        30,
        "the busy request to start executing",
    )
    results = concurrently(server, requests)
    worker.join()
    assert not isinstance(busy[0], Exception), busy[0]
    # Triton updates its statistics when a request is released, just after its response:
    # wait until they include every request sent, then read them.
    wait_until(
        lambda: (
            server.metric("nv_inference_request_success")
            + server.metric("nv_inference_request_failure")
            >= before_requests + 1 + len(requests)
        ),
        10,
        "Triton's statistics to include every request",
    )
    return (
        results,
        server.metric("nv_inference_exec_count") - executions,
        server.metric("nv_inference_count") - inferences,
    )


@pytest.mark.parametrize(
    ("width", "height"),
    [
        pytest.param(64, 64, id="tier default size 64x64"),
        pytest.param(96, 64, id="wide 96x64"),
        pytest.param(64, 128, id="tall 64x128"),
    ],
)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_png_of_the_requested_size(
    http_client: Any, grpc_client: Any, protocol: str, width: int, height: int
) -> None:
    generate: Callable[[Any, ImageRequest], list[bytes]] = (
        generate_http if protocol == "http" else generate_grpc
    )
    client = http_client if protocol == "http" else grpc_client
    images = generate(client, ImageRequest("a red cube", width=width, height=height, seed=3))
    assert len(images) == 1
    assert png_size(images[0]) == (width, height)


def test_same_seed_same_bytes_over_http_and_grpc(http_client: Any, grpc_client: Any) -> None:
    request = ImageRequest("a lighthouse at dusk", seed=42, width=64, height=64)
    first = generate_http(http_client, request)
    assert generate_http(http_client, request) == first
    assert generate_grpc(grpc_client, request) == first
    assert generate_grpc(grpc_client, ImageRequest(request.prompt, seed=43)) != first


def test_streaming_grpc_passes_the_gate_with_the_same_bytes(grpc_client: Any) -> None:
    """ModelStreamInfer, the gate's other forwarding path, gives what ModelInfer gives."""
    request = ImageRequest("a lighthouse at dusk", seed=42, width=64, height=64)
    results: queue.Queue[Any] = queue.Queue()
    grpc_client.start_stream(callback=lambda result, error: results.put(error or result))
    try:
        for _ in range(2):
            grpc_client.async_stream_infer(
                triton.DEFAULT_MODEL_NAME,
                client_inputs(grpcclient, request),
                outputs=[grpcclient.InferRequestedOutput(triton.IMAGES)],
            )
        streamed = [results.get(timeout=60) for _ in range(2)]
    finally:
        grpc_client.stop_stream()
    expected = generate_grpc(grpc_client, request)
    for result in streamed:
        assert not isinstance(result, Exception), result
        assert pngs(result) == expected


def test_defaults_fill_omitted_inputs(grpc_client: Any) -> None:
    (image,) = generate_grpc(grpc_client, ImageRequest("only a prompt"))
    assert png_size(image) == (64, 64)


def test_several_images_per_request_follow_consecutive_seeds(grpc_client: Any) -> None:
    many = generate_grpc(grpc_client, ImageRequest("two birds", seed=100, num_images=2))
    assert len(many) == 2
    assert many[0] == generate_grpc(grpc_client, ImageRequest("two birds", seed=100))[0]
    assert many[1] == generate_grpc(grpc_client, ImageRequest("two birds", seed=101))[0]


@pytest.mark.parametrize(
    "guidance",
    [
        pytest.param(0.0, id="without guidance"),
        pytest.param(5.0, id="with classifier-free guidance"),
    ],
)
def test_seed_gives_the_same_bytes_in_any_batch(
    server: RuntimeServer, grpc_client: Any, guidance: float
) -> None:
    reference_request = ImageRequest(
        "a cat on a mat", seed=7, guidance_scale=guidance, negative_prompt="blurry"
    )
    alone = generate_grpc(grpc_client, reference_request)
    neighbours = [
        ImageRequest(
            f"neighbour {i}", seed=1000 + i, guidance_scale=guidance, negative_prompt=f"n{i}"
        )
        for i in range(6)
    ]
    burst = [*neighbours[:3], reference_request, *neighbours[3:], reference_request]
    results, executions, inferences = one_batch_after_busy(server, burst)
    assert inferences == len(burst) + 1
    assert executions == 2, "the burst should have run as one batch after the busy request"
    assert results[3] == alone
    assert results[7] == alone
    assert results[0] != alone


def test_concurrent_requests_are_batched(server: RuntimeServer) -> None:
    burst = [full(f"prompt {i}", seed=i) for i in range(8)]
    results, executions, inferences = one_batch_after_busy(server, burst)
    assert all(not isinstance(r, Exception) for r in results), results
    assert inferences == 9
    assert executions == 2
    buckets = {
        float(s.labels["le"]): s.value
        for s in server.metrics()
        if s.name == "duotone_pipeline_batch_images_bucket"
    }
    assert buckets[4.0] < buckets[8.0], "a pipeline call of 5 to 8 images should be recorded"


@pytest.mark.parametrize(
    ("request_", "field", "message"),
    [
        pytest.param(
            ImageRequest("x", steps=12),
            "steps",
            "steps: 12 exceeds the tier's limits.maxSteps 8",
            id="steps over the tier's maximum",
        ),
        pytest.param(
            ImageRequest("x", steps=0), "steps", "steps: 0 must be at least 1", id="zero steps"
        ),
        pytest.param(
            ImageRequest("x", width=100),
            "width",
            "width: 100 must be a multiple of 8",
            id="width not a multiple of 8",
        ),
        pytest.param(
            ImageRequest("x", height=512),
            "height",
            "height: 512 exceeds the tier's limits.maxHeight 256",
            id="height over the tier's maximum",
        ),
        pytest.param(
            ImageRequest("x", guidance_scale=30.0),
            "guidanceScale",
            "guidanceScale: 30 exceeds the tier's limits.maxGuidanceScale 20",
            id="guidance over the tier's maximum",
        ),
        pytest.param(
            ImageRequest("x", num_images=5),
            "numImages",
            "numImages: 5 exceeds the tier's limits.maxImagesPerRequest 4",
            id="too many images",
        ),
        pytest.param(
            ImageRequest("x" * 201),
            "prompt",
            "prompt: 201 characters exceeds the tier's limits.maxPromptLength 200",
            id="prompt too long",
        ),
        pytest.param(
            ImageRequest("x", seed=-1), "seed", "seed: -1 must be between", id="negative seed"
        ),
    ],
)
def test_out_of_bounds_input_is_refused_naming_the_field(
    http_client: Any, grpc_client: Any, request_: ImageRequest, field: str, message: str
) -> None:
    with pytest.raises(InferenceServerException, match=message) as over_http:
        generate_http(http_client, request_)
    assert over_http.value.status() == "400"
    with pytest.raises(InferenceServerException, match=message) as over_grpc:
        generate_grpc(grpc_client, request_)
    assert "INVALID_ARGUMENT" in str(over_grpc.value.status())
    assert field in message


def test_bad_requests_do_not_fail_their_batch_or_the_server(server: RuntimeServer) -> None:
    good = [full(f"good {i}", seed=i) for i in range(4)]
    bad = [
        full("bad", steps=99),
        full("bad", width=4096),
        full(""),
        full("bad", num_images=0),
    ]
    burst = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3], bad[3]]
    results, executions, _ = one_batch_after_busy(server, burst)
    assert executions == 2, "good and bad requests should have shared one batch"
    for position, result in enumerate(results):
        if position % 2 == 0:
            assert isinstance(result, list), result
            assert len(result) == 1
        else:
            assert isinstance(result, Exception)
    assert "steps: 99" in str(results[1])
    assert "width: 4096" in str(results[3])
    assert "prompt: must not be empty" in str(results[5])
    assert "numImages: 0" in str(results[7])
    assert server.is_ready()


def test_metrics_report_queue_latency_and_runtime_figures(
    server: RuntimeServer, grpc_client: Any
) -> None:
    generate_grpc(grpc_client, ImageRequest("metrics", seed=5, steps=4))
    samples = server.metrics()
    names = {s.name for s in samples}
    for triton_metric in (
        "nv_inference_pending_request_count",
        "nv_inference_request_summary_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_exec_count",
        "nv_inference_count",
    ):
        assert triton_metric in names, triton_metric

    def value(name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert value("nv_inference_pending_request_count") == 0
    assert "duotone_executing_requests" in names
    assert value("duotone_executing_requests") == 0, "every request has left execute"
    p50 = value("nv_inference_request_summary_us", quantile="0.5")
    assert 1_000 < p50 < 60_000_000, "p50 should be between 1 ms and a minute"
    images = value("duotone_images_generated_total")
    assert images >= 1
    assert value("duotone_denoising_steps_total") >= 4
    assert value("duotone_denoising_steps_per_second") > 0
    for stage in ("text_encoding", "denoising", "vae_decode", "png_encode"):
        assert value("duotone_stage_seconds_total", stage=stage) > 0, stage
        assert value("duotone_stage_duration_seconds_count", stage=stage) >= 1, stage
    assert value("duotone_pipeline_batch_images_count") >= 1
    assert value("duotone_pipeline_batch_images_sum") == images


def test_thread_pools_follow_the_launchers_count(server: RuntimeServer) -> None:
    """The test bed starts servers with `--cpu-threads 1`; the model's torch uses exactly that."""
    log = server.log.read_text(errors="replace")
    assert "CPU threads: 1 from --cpu-threads 1; 1 per model instance" in log, log[-3000:]
    assert "duotone: torch CPU threads: 1 intra-op, 1 inter-op" in log, log[-3000:]
