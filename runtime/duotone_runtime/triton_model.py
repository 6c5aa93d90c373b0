"""The Triton Python-backend model: one diffusers pipeline behind Triton's dynamic batcher.

In a tier with `batching.mode: step` the model is decoupled: `execute` checks each request,
hands it to the step loop (`step_loop.py`, running on its own thread) and returns; the loop
answers each request through its response sender when it finishes, is cancelled or misses its
deadline.

The launcher copies this file into the model repository as `<model>/1/model.py`. `initialize`
loads the pipeline once (readiness means it is loaded and warmed up); `execute` validates each
request against the tier's limits, groups the valid ones by shape into pipeline calls, and
returns exactly one response per request: PNG files, or an error naming the offending field.
One request's problem never fails the others in its batch. Each pipeline call's outcome feeds
the model's health (`model_health.py`): when the model can no longer serve, it writes the
health file the gate reads, and the pod is replaced.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from duotone_contracts import metrics as m
from duotone_contracts import triton
from duotone_contracts.api.validation import FieldError
from duotone_contracts.latency import LatencyWindow
from duotone_contracts.limits import (
    MAX_SEED,
    GenerationRequest,
    RawRequest,
    RequestError,
    validate_request,
)
from duotone_contracts.tier import parse_tier_document
from duotone_runtime.batching import ShapeKey, plan_pipeline_calls
from duotone_runtime.execution import STAGES, PipelineRunner, apply_torch_threads
from duotone_runtime.loading import compute_dtype, load_pipeline, resolve_source
from duotone_runtime.model_health import FAULT_ENV, ModelHealth, record_call, write_failure
from duotone_runtime.step_loop import Entry, Finished, Refusal, StepLoop
from duotone_runtime.stepping import PipelineStepper

LATENCY_WINDOW_S = 60.0
"""The step loop's exported median covers the requests answered in the last minute."""

REFUSAL_CODES = {
    Refusal.CANCELLED: "CANCELLED",
    Refusal.DEADLINE: "UNAVAILABLE",
    Refusal.INFEASIBLE: "UNAVAILABLE",
    Refusal.QUEUE_FULL: "UNAVAILABLE",
    Refusal.FAILED: "INTERNAL",
}
"""The TritonError code of each step-loop refusal."""

BATCH_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
STEP_BUCKETS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
SECONDS_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]


class _Metrics:
    """Runtime metrics through the Python backend's metrics API (served on Triton's port)."""

    def __init__(self, labels: dict[str, str]) -> None:
        counter, gauge, histogram = (
            pb_utils.MetricFamily.COUNTER,
            pb_utils.MetricFamily.GAUGE,
            pb_utils.MetricFamily.HISTOGRAM,
        )
        self._families: list[Any] = []

        def family(metric: m.Metric, kind: Any) -> Any:
            created = pb_utils.MetricFamily(name=metric.name, description=metric.help, kind=kind)
            self._families.append(created)
            return created

        images = family(m.IMAGES_GENERATED, counter)
        steps = family(m.DENOISING_STEPS, counter)
        rate = family(m.DENOISING_STEPS_PER_SECOND, gauge)
        stage_total = family(m.STAGE_SECONDS, counter)
        stage_hist = family(m.STAGE_DURATION, histogram)
        batch = family(m.PIPELINE_BATCH_IMAGES, histogram)
        requests = family(m.EXECUTE_BATCH_REQUESTS, histogram)
        executing = family(m.EXECUTING_REQUESTS, gauge)
        gpus = family(m.ALLOCATED_GPUS, gauge)
        rejected = family(m.REQUESTS_REJECTED, counter)
        step_batch = family(m.STEP_BATCH_IMAGES, histogram)
        step_duration = family(m.STEP_DURATION, histogram)
        queue_wait = family(m.STEP_QUEUE_WAIT, histogram)
        request_steps = family(m.STEP_REQUEST_STEPS, histogram)
        step_p50 = family(m.STEP_REQUEST_P50_US, gauge)
        partials = family(m.PARTIAL_IMAGES_SENT, counter)
        self.images = images.Metric(labels=labels)
        self.steps = steps.Metric(labels=labels)
        self.steps_per_second = rate.Metric(labels=labels)
        self.stage_total = {s: stage_total.Metric(labels={**labels, m.STAGE: s}) for s in STAGES}
        self.stage_duration = {
            s: stage_hist.Metric(labels={**labels, m.STAGE: s}, buckets=SECONDS_BUCKETS)
            for s in STAGES
        }
        self.batch_images = batch.Metric(labels=labels, buckets=BATCH_BUCKETS)
        self.batch_requests = requests.Metric(labels=labels, buckets=BATCH_BUCKETS)
        self.executing = executing.Metric(labels=labels)
        self.allocated_gpus = gpus.Metric(labels=labels)
        self.rejected = {
            reason: rejected.Metric(labels={**labels, m.REASON: reason})
            for reason in m.REJECTION_REASONS
        }
        self.step_batch_images = step_batch.Metric(labels=labels, buckets=BATCH_BUCKETS)
        self.step_duration = step_duration.Metric(labels=labels, buckets=SECONDS_BUCKETS)
        self.queue_wait = queue_wait.Metric(labels=labels, buckets=SECONDS_BUCKETS)
        self.request_steps = request_steps.Metric(labels=labels, buckets=STEP_BUCKETS)
        self.step_p50_us = step_p50.Metric(labels=labels)
        self.partial_images = partials.Metric(labels=labels)


def _single(request: Any, spec: triton.InputSpec) -> Any:
    """The one value of an input, or None when the client left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, spec.name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise RequestError(
            (FieldError(spec.field, f"expected one value per request, got {values.size}"),)
        )
    value = values[0]
    if spec.binary:
        return value if isinstance(value, bytes) else bytes(value)
    if spec.data_type == "TYPE_STRING":
        raw = value if isinstance(value, bytes) else str(value).encode()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise RequestError((FieldError(spec.field, "is not valid UTF-8"),)) from error
    if spec.data_type == "TYPE_FP32":
        return float(value)
    return int(value)


def read_request(request: Any) -> RawRequest:
    """The inputs of one Triton request as a RawRequest."""
    values = {spec.attribute: _single(request, spec) for spec in triton.INPUTS}
    return RawRequest(**{**values, "prompt": values["prompt"] or ""})


def _error(message: str, code: Any) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))


class TritonPythonModel:
    """Triton's entry points: initialize, execute, finalize."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.tier = parse_tier_document(params["tier"])
        self.logger = pb_utils.Logger
        device = params.get("device", "cpu")
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args['model_instance_device_id']}"
        threads = apply_torch_threads(os.environ)
        self.logger.log_info(
            f"duotone: torch CPU threads: {threads.intra_op} intra-op, {threads.inter_op} inter-op"
        )
        model = self.tier.spec.model
        resolved = resolve_source(
            model.source,
            pvc_root=Path(params.get("pvc_root", "/models")),
            cache_dir=Path(params.get("cache_dir") or tempfile.gettempdir()),
            allow_download=model.allow_download,
        )
        dtype = compute_dtype(model.dtype, device)
        pipeline = load_pipeline(resolved, dtype=dtype, device=device)
        self.runner = PipelineRunner(
            pipeline, device=device, batch_invariant=params.get("batch_invariant") == "true"
        )
        self.max_images_per_call = max(
            int(config["max_batch_size"]), self.tier.spec.limits.max_images_per_request
        )
        self.metrics = _Metrics({m.MODEL: args["model_name"], m.TIER: self.tier.name})
        self.metrics.allocated_gpus.set(float(self.tier.spec.resources.gpus))
        defaults = self.tier.spec.defaults
        # One step at the default shape, so the first client does not pay for kernel setup.
        warmup = GenerationRequest(
            "warm-up", "", 1, defaults.guidance_scale, defaults.width, defaults.height, 0, 1
        )
        self.runner.run(ShapeKey.of(warmup), [warmup])
        self.health = ModelHealth()
        self.health_file = Path(params["health_file"]) if params.get("health_file") else None
        self.injected_error = os.environ.get(FAULT_ENV) or None
        if self.injected_error is not None:
            self.logger.log_warn(f"duotone: {FAULT_ENV} is set: every pipeline call will fail")
        self.loop: StepLoop[Any] | None = None
        if self.tier.spec.batching.mode == "step":
            self._start_loop()
        self.logger.log_info(
            f"duotone: tier {self.tier.name} serving {model.source} ({dtype}) on {device}; "
            f"batch-invariant layers: {self.runner.batch_invariant_layers}; "
            f"batching: {self.tier.spec.batching.mode}"
        )

    def _start_loop(self) -> None:
        stepper = PipelineStepper(self.runner)
        if not stepper.stepwise:
            self.logger.log_warn(
                f"duotone: {type(self.runner.pipeline).__name__} cannot be stepped: step "
                "batching runs each request as one call between steps"
            )
        batching = self.tier.spec.batching
        self.loop = StepLoop(
            stepper,
            _LoopEvents(self),
            capacity=batching.max_batch_size,
            max_queued=batching.max_queue_size,
            clock=time.monotonic,
            # One worker: decodes and answers in the order requests finished, beside the steps.
            finisher=ThreadPoolExecutor(1, thread_name_prefix="step-finish"),
        )
        self._stopping = threading.Event()
        self._loop_thread = threading.Thread(target=self._run_loop, name="step-loop", daemon=True)
        self._loop_thread.start()

    def _run_loop(self) -> None:
        loop = self.loop
        assert loop is not None
        events = loop.events
        published = time.monotonic()
        while not self._stopping.is_set():
            try:
                if not loop.run_once():
                    loop.wait_for_work(0.5)
                if isinstance(events, _LoopEvents) and time.monotonic() - published > 1:
                    events.publish_p50()  # ages the median out when nothing is answered
                    published = time.monotonic()
            except Exception as error:  # the loop must outlive any one round
                self.logger.log_error(f"duotone: step loop round failed: {error!r}")

    def execute(self, requests: Sequence[Any]) -> list[Any] | None:
        if self.loop is not None:
            self._submit(self.loop, requests)
            return None
        # Queued plus executing is the load the autoscaler sees; Triton counts only the queue.
        # Instances share the gauge, so each adds and removes its own batch.
        self.metrics.executing.increment(float(len(requests)))
        try:
            return self._execute(requests)
        finally:
            self.metrics.executing.increment(-float(len(requests)))

    def _checked(self, request: Any) -> GenerationRequest:
        """One Triton request with the tier's defaults applied; RequestError names its fields."""
        spec = self.tier.spec
        return validate_request(
            read_request(request),
            spec.defaults,
            spec.limits,
            seed_if_missing=secrets.randbelow(MAX_SEED + 1),
        )

    def _execute(self, requests: Sequence[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        valid: list[GenerationRequest | None] = [None] * len(requests)
        for position, request in enumerate(requests):
            try:
                valid[position] = self._checked(request)
            except RequestError as error:
                self.metrics.rejected["invalid"].increment(1)
                responses[position] = _error(str(error), pb_utils.TritonError.INVALID_ARG)
        self.metrics.batch_requests.observe(float(len(requests)))

        for call in plan_pipeline_calls(valid, self.max_images_per_call):
            members = [p for p in call.members if not requests[p].is_cancelled()]
            for position in set(call.members) - set(members):
                self.metrics.rejected["cancelled"].increment(1)
                responses[position] = _error("request cancelled", pb_utils.TritonError.CANCELLED)
            if not members:
                continue
            batch = [valid[p] for p in members]
            if not self.runner.supports(call.shape.mode):
                for position in members:
                    self.metrics.rejected["invalid"].increment(1)
                    responses[position] = _error(
                        f"{triton.IMAGE.field}: this tier's model cannot serve "
                        f"{call.shape.mode} edits",
                        pb_utils.TritonError.INVALID_ARG,
                    )
                continue
            try:
                if self.injected_error is not None:
                    raise RuntimeError(self.injected_error)
                result = self.runner.run(call.shape, [r for r in batch if r is not None])
            except Exception as error:  # one failed call must not fail the other groups
                self.logger.log_error(f"duotone: pipeline call {call.shape} failed: {error!r}")
                self._record_health((type(error).__name__, str(error)))
                for position in members:
                    self.metrics.rejected["failed"].increment(1)
                    responses[position] = _error(
                        f"generation failed: {type(error).__name__}: {error}",
                        pb_utils.TritonError.INTERNAL,
                    )
                continue
            self._record_health(None)
            self._record(result.image_count, result.denoising_steps, result.stages.as_dict())
            served = zip(members, result.images, result.prompt_tokens, strict=True)
            for position, files, tokens in served:
                request = valid[position]
                assert request is not None
                responses[position] = _outputs(files, tokens, request.image_steps())
        return responses

    def _submit(self, loop: StepLoop[Any], requests: Sequence[Any]) -> None:
        """Step mode: check each request and hand it to the loop (answered from there)."""
        now = time.monotonic()
        spec = self.tier.spec
        self.metrics.batch_requests.observe(float(len(requests)))
        for request in requests:
            sender = request.get_response_sender()
            try:
                checked = self._checked(request)
            except RequestError as error:
                self.metrics.rejected["invalid"].increment(1)
                _send_final(sender, _error(str(error), pb_utils.TritonError.INVALID_ARG))
                continue
            if not self.runner.supports(checked.mode):
                self.metrics.rejected["invalid"].increment(1)
                message = (
                    f"{triton.IMAGE.field}: this tier's model cannot serve {checked.mode} edits"
                )
                _send_final(sender, _error(message, pb_utils.TritonError.INVALID_ARG))
                continue
            if self.injected_error is not None:
                self._record_health((RuntimeError.__name__, self.injected_error))
                self.metrics.rejected["failed"].increment(1)
                message = f"generation failed: RuntimeError: {self.injected_error}"
                _send_final(sender, _error(message, pb_utils.TritonError.INTERNAL))
                continue
            budget_ms = checked.deadline_ms or spec.batching.request_timeout_ms
            self.metrics.executing.increment(1.0)
            loop.submit(checked, sender, arrival=now, deadline=now + budget_ms / 1000)

    def _record_health(self, error: tuple[str, str] | None) -> None:
        failed_before = self.health.failed
        self.health = record_call(self.health, error)
        if self.health.failed is None or failed_before is not None:
            return
        self.logger.log_error(f"duotone: the model can no longer serve: {self.health.failed}")
        if self.health_file is not None:
            write_failure(self.health_file, self.health.failed)

    def _record(self, images: int, steps: int, stages: dict[str, float]) -> None:
        self.metrics.images.increment(float(images))
        self.metrics.steps.increment(float(steps))
        if stages["denoising"] > 0:
            self.metrics.steps_per_second.set(steps / stages["denoising"])
        self.metrics.batch_images.observe(float(images))
        for stage, seconds in stages.items():
            self.metrics.stage_total[stage].increment(seconds)
            self.metrics.stage_duration[stage].observe(seconds)

    def finalize(self) -> None:
        if self.loop is not None:
            self._stopping.set()
            self.loop.wake()
            self._loop_thread.join(timeout=10)
        self.logger.log_info("duotone: model unloaded")


def _send_final(sender: Any, response: Any) -> None:
    sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def _outputs(
    files: list[bytes], prompt_tokens: int, image_steps: int, index: int = triton.FINAL_INDEX
) -> Any:
    """A response: the answer, or (with a preview's `index`) one of its previews."""
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor(triton.IMAGES, np.array([files], dtype=np.object_)),
            pb_utils.Tensor(triton.PROMPT_TOKENS, np.array([[prompt_tokens]], np.int32)),
            pb_utils.Tensor(triton.STEPS_COMPUTED, np.array([[image_steps]], np.int32)),
            pb_utils.Tensor(triton.PARTIAL_INDEX, np.array([[index]], np.int32)),
        ]
    )


class _LoopEvents:
    """The step loop's answers as Triton responses, and its metrics."""

    def __init__(self, model: TritonPythonModel) -> None:
        self.model = model
        self.metrics = model.metrics
        self._latencies = LatencyWindow(window_s=LATENCY_WINDOW_S)
        self._latency_lock = threading.Lock()
        self.metrics.step_p50_us.set(math.nan)

    def publish_p50(self, latency_s: float | None = None) -> None:
        """Add an answered request's latency (if any) and export the window's median (NaN when
        the last minute answered nothing)."""
        now = time.monotonic()
        with self._latency_lock:
            if latency_s is not None:
                self._latencies = self._latencies.add(now, latency_s * 1000)
            p50_ms = self._latencies.p50(now, min_samples=1)
        self.metrics.step_p50_us.set(math.nan if p50_ms is None else p50_ms * 1000)

    def is_cancelled(self, handle: Any) -> bool:
        return bool(handle.is_cancelled())

    def answered(self, entry: Entry[Any], finished: Finished) -> None:
        self.publish_p50(time.monotonic() - entry.job.arrival)
        self.metrics.executing.increment(-1.0)
        self.metrics.request_steps.observe(float(entry.steps_done or entry.request.steps_run()))
        self.model._record_health(None)
        metrics = self.metrics
        if "denoising" in finished.stages:  # a whole call: its steps were not stepped here
            self.model._record(len(finished.files), finished.image_steps, finished.stages)
        else:
            metrics.images.increment(float(len(finished.files)))
            for stage, seconds in finished.stages.items():
                if stage in metrics.stage_total:
                    metrics.stage_total[stage].increment(seconds)
                    metrics.stage_duration[stage].observe(seconds)
        _send_final(
            entry.handle, _outputs(finished.files, finished.prompt_tokens, finished.image_steps)
        )

    def previewed(self, entry: Entry[Any], index: int, steps_done: int, files: list[bytes]) -> None:
        if self.is_cancelled(entry.handle):
            return  # the client went away: the loop drops it before the next step
        entry.handle.send(_outputs(files, 0, steps_done * entry.request.num_images, index))
        self.metrics.partial_images.increment(float(len(files)))

    def refused(self, entry: Entry[Any], refusal: Refusal, message: str) -> None:
        self.metrics.executing.increment(-1.0)
        self.metrics.rejected[refusal.value].increment(1)
        if refusal in (Refusal.CANCELLED, Refusal.DEADLINE):
            self.metrics.request_steps.observe(float(entry.steps_done))
        if refusal is Refusal.FAILED:
            self.model.logger.log_error(f"duotone: step loop: {message}")
            self.model._record_health(("StepFailure", message))
        code = getattr(pb_utils.TritonError, REFUSAL_CODES[refusal])
        _send_final(entry.handle, _error(message, code))

    def admitted(self, entry: Entry[Any], now: float) -> None:
        self.metrics.queue_wait.observe(max(0.0, now - entry.job.arrival))

    def stepped(self, images: int, seconds: float) -> None:
        metrics = self.metrics
        metrics.step_batch_images.observe(float(images))
        metrics.step_duration.observe(seconds)
        metrics.steps.increment(float(images))
        metrics.stage_total["denoising"].increment(seconds)
        metrics.stage_duration["denoising"].observe(seconds)
        if seconds > 0:
            metrics.steps_per_second.set(images / seconds)
