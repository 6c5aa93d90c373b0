"""The model's health policy: which failed pipeline calls end the model, and the health file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duotone_runtime.model_health import (
    ErrorKind,
    HealthFile,
    HealthPolicy,
    ModelHealth,
    classify_error,
    record_call,
    write_failure,
)

pytestmark = pytest.mark.unit

OOM = ("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB")
CUDA = ("AcceleratorError", "CUDA error: an illegal memory access was encountered")
BUG = ("ValueError", "height must be divisible by 8")


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        pytest.param(OOM, ErrorKind.OUT_OF_MEMORY, id="torch out of memory"),
        pytest.param(
            ("RuntimeError", "CUDA error: out of memory"),
            ErrorKind.OUT_OF_MEMORY,
            id="out of memory outside the caching allocator is not a broken device",
        ),
        pytest.param(CUDA, ErrorKind.FATAL, id="illegal memory access"),
        pytest.param(
            ("RuntimeError", "CUDA error: device-side assert triggered"),
            ErrorKind.FATAL,
            id="device-side assert",
        ),
        pytest.param(
            ("RuntimeError", "CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"),
            ErrorKind.FATAL,
            id="cublas failure",
        ),
        pytest.param(BUG, ErrorKind.OTHER, id="an ordinary exception"),
    ],
)
def test_classify_error(error: tuple[str, str], kind: ErrorKind) -> None:
    assert classify_error(*error) is kind


def calls(*errors: tuple[str, str] | None) -> ModelHealth:
    health = ModelHealth()
    for error in errors:
        health = record_call(health, error)
    return health


@pytest.mark.parametrize(
    ("errors", "failed"),
    [
        pytest.param([CUDA], "device error: AcceleratorError", id="one device error is fatal"),
        pytest.param([OOM, OOM], None, id="two OOMs in a row: still serving"),
        pytest.param(
            [OOM, OOM, OOM], "3 pipeline calls in a row ran out of memory", id="three OOMs: failed"
        ),
        pytest.param([OOM, OOM, None, OOM, OOM], None, id="a success resets the OOM count"),
        pytest.param([BUG] * 4, None, id="four ordinary failures: still serving"),
        pytest.param(
            [BUG] * 5,
            "5 pipeline calls in a row failed (last: ValueError)",
            id="five failures in a row: failed",
        ),
        pytest.param(
            [BUG, BUG, OOM, OOM, BUG],
            "5 pipeline calls in a row failed (last: ValueError)",
            id="OOMs count as failures too",
        ),
        pytest.param([BUG] * 4 + [None] + [BUG] * 4, None, id="a success resets the count"),
        pytest.param(
            [CUDA, None, None], "device error: AcceleratorError", id="a failed model stays failed"
        ),
        pytest.param([None] * 10, None, id="successes only"),
    ],
)
def test_record_call(errors: list[tuple[str, str] | None], failed: str | None) -> None:
    assert calls(*errors).failed == failed


@given(
    st.lists(st.sampled_from([None, OOM, CUDA, BUG]), max_size=30),
    st.integers(1, 6),
    st.integers(1, 6),
)
def test_failed_only_after_a_device_error_or_a_long_enough_run_of_failures(
    errors: list[tuple[str, str] | None], max_failures: int, max_oom: int
) -> None:
    policy = HealthPolicy(
        max_consecutive_failures=max_failures, max_consecutive_out_of_memory=max_oom
    )
    health = ModelHealth()
    run = oom_run = 0
    expected = False
    for error in errors:
        health = record_call(health, error, policy)
        run = 0 if error is None else run + 1
        oom_run = oom_run + 1 if error is OOM else 0
        expected = expected or error is CUDA or run >= max_failures or oom_run >= max_oom
        assert (health.failed is not None) == expected


def test_the_gate_reads_what_the_model_writes(tmp_path: Path) -> None:
    path = tmp_path / "model-health.json"
    watch = HealthFile(path)
    assert watch.failure() is None, "no file: the model serves"
    write_failure(path, "device error: AcceleratorError")
    assert watch.failure() == "device error: AcceleratorError"
    path.unlink()
    assert watch.failure() == "device error: AcceleratorError", "a failure is never forgotten"


def test_an_unreadable_health_file_counts_as_failed(tmp_path: Path) -> None:
    path = tmp_path / "model-health.json"
    path.write_text("{not json")
    assert HealthFile(path).failure() == "unreadable health file"


def test_no_health_file_configured_means_healthy() -> None:
    assert HealthFile(None).failure() is None
