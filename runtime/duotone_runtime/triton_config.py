"""Rendering the Triton model configuration (`config.pbtxt`) from a tier spec (pure).

The tier's batching block maps onto Triton's dynamic batcher and queue policy:
maxBatchSize -> max_batch_size, maxQueueDelayMs -> max_queue_delay_microseconds,
maxQueueSize -> default_queue_policy.max_queue_size (a full queue rejects at once), and
requestTimeoutMs -> default_timeout_microseconds with timeout_action REJECT (a request still
queued after that long is rejected without running).

In `mode: step` the model is decoupled (`execute` hands requests to the step loop and returns;
responses are sent when they are ready) and the dynamic batcher waits for nothing
(max_queue_delay 0): batches form between denoising steps, in the runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from duotone_contracts import triton
from duotone_contracts.api.v1alpha1 import BatchingSpec

InstanceKind = Literal["KIND_CPU", "KIND_GPU"]


def pbtxt_string(value: str) -> str:
    """A protobuf text-format string literal."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def _input_block(spec: triton.InputSpec) -> str:
    lines = [
        "  {",
        f"    name: {pbtxt_string(spec.name)}",
        f"    data_type: {spec.data_type}",
        "    dims: [ 1 ]",
    ]
    if spec.optional:
        lines.append("    optional: true")
    lines.append("  }")
    return "\n".join(lines)


def render_config_pbtxt(
    *,
    model_name: str,
    batching: BatchingSpec,
    instance_kind: InstanceKind,
    instance_count: int = 1,
    parameters: Mapping[str, str] | None = None,
) -> str:
    """The config.pbtxt of the Python-backend model serving one tier."""
    if instance_count < 1:
        raise ValueError(f"instance_count must be at least 1, got {instance_count}")
    stepped = batching.mode == "step"
    delay_us = 0 if stepped else batching.max_queue_delay_ms * 1000
    policy = "model_transaction_policy {\n  decoupled: true\n}\n" if stepped else ""
    inputs = ",\n".join(_input_block(spec) for spec in triton.INPUTS)
    outputs = ",\n".join(
        f"  {{\n    name: {pbtxt_string(name)}\n    data_type: {data_type}\n"
        f"    dims: [ {dims} ]\n  }}"
        for name, data_type, dims in triton.OUTPUTS
    )
    params = "".join(
        f"parameters {{\n  key: {pbtxt_string(key)}\n"
        f"  value: {{ string_value: {pbtxt_string(value)} }}\n}}\n"
        for key, value in sorted((parameters or {}).items())
    )
    return (
        f"name: {pbtxt_string(model_name)}\n"
        'backend: "python"\n'
        f"max_batch_size: {batching.max_batch_size}\n"
        f"input [\n{inputs}\n]\n"
        f"output [\n{outputs}\n]\n"
        f"{policy}"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {delay_us}\n"
        "  default_queue_policy {\n"
        "    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {batching.request_timeout_ms * 1000}\n"
        "    allow_timeout_override: true\n"
        f"    max_queue_size: {batching.max_queue_size}\n"
        "  }\n"
        "}\n"
        "instance_group [\n"
        f"  {{ count: {instance_count}, kind: {instance_kind} }}\n"
        "]\n"
        f"{params}"
    )
