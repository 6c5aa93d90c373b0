"""Rendering config.pbtxt from the tier's batching spec."""

from __future__ import annotations

import pytest

from duotone_contracts import triton
from duotone_contracts.api.v1alpha1 import BatchingSpec
from duotone_runtime.triton_config import pbtxt_string, render_config_pbtxt

pytestmark = pytest.mark.unit

BATCHING = BatchingSpec(
    max_batch_size=16, max_queue_delay_ms=10, max_queue_size=256, request_timeout_ms=30000
)


def render(**overrides: object) -> str:
    arguments: dict[str, object] = {
        "model_name": "duotone",
        "batching": BATCHING,
        "instance_kind": "KIND_GPU",
    } | overrides
    return render_config_pbtxt(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param('name: "duotone"', id="model name"),
        pytest.param('backend: "python"', id="python backend"),
        pytest.param("max_batch_size: 16", id="maxBatchSize"),
        pytest.param("max_queue_delay_microseconds: 10000", id="maxQueueDelayMs in microseconds"),
        pytest.param("max_queue_size: 256", id="maxQueueSize bounds the queue"),
        pytest.param("timeout_action: REJECT", id="stale requests are rejected, never delayed"),
        pytest.param(
            "default_timeout_microseconds: 30000000", id="requestTimeoutMs in microseconds"
        ),
        pytest.param("{ count: 1, kind: KIND_GPU }", id="one GPU instance"),
    ],
)
def test_rendered_config_carries(line: str) -> None:
    assert line in render()


def test_cpu_instances() -> None:
    assert "{ count: 2, kind: KIND_CPU }" in render(instance_kind="KIND_CPU", instance_count=2)


def test_every_input_is_declared_with_its_type_and_only_prompt_is_required() -> None:
    config = render()
    for spec in triton.INPUTS:
        block = config.split(f'name: "{spec.name}"', 1)[1].split("}", 1)[0]
        assert f"data_type: {spec.data_type}" in block
        assert "dims: [ 1 ]" in block
        assert ("optional: true" in block) == (spec.name != "PROMPT")
    assert 'name: "IMAGES"\n    data_type: TYPE_STRING\n    dims: [ -1 ]' in config


def test_parameters_are_escaped_string_values() -> None:
    config = render(parameters={"tier": '{"name": "efficient"}', "device": "cuda"})
    assert 'key: "tier"\n  value: { string_value: "{\\"name\\": \\"efficient\\"}" }' in config
    assert config.index('key: "device"') < config.index('key: "tier"'), "sorted by key"


@pytest.mark.parametrize(
    ("raw", "literal"),
    [
        pytest.param("plain", '"plain"', id="plain text"),
        pytest.param('say "hi"', '"say \\"hi\\""', id="quotes"),
        pytest.param("a\\b", '"a\\\\b"', id="backslash"),
        pytest.param("line\nbreak", '"line\\nbreak"', id="newline"),
    ],
)
def test_pbtxt_string(raw: str, literal: str) -> None:
    assert pbtxt_string(raw) == literal


def test_instance_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        render(instance_count=0)


def test_request_mode_is_not_decoupled() -> None:
    assert "decoupled" not in render()


def test_step_mode_is_decoupled_and_batches_nothing_in_triton() -> None:
    stepped = BATCHING.model_copy(update={"mode": "step"})
    config = render(batching=stepped)
    assert "model_transaction_policy {\n  decoupled: true\n}" in config
    assert "max_queue_delay_microseconds: 0\n" in config
    assert "max_queue_size: 256" in config
    assert "max_batch_size: 16" in config
