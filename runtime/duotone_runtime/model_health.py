"""Whether the model can still serve, decided from its pipeline calls, and how the gate learns it.

A pipeline exception fails only the requests of that call, but some failures mean every later
call will fail too: a CUDA error leaves the context unusable, and out-of-memory that repeats
means the memory is not coming back. `record_call` is the policy (pure): once it says the model
failed, it stays failed, and the pod must be replaced.

The model runs in Triton's stub process and the gate is its grandparent, so the model writes
its verdict to a health file (`write_failure`) that the gate reads (`HealthFile`): the gate then
reports not ready and not live, and the kubelet restarts the container.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Final

FAULT_ENV: Final = "DUOTONE_FAULT_PIPELINE_ERROR"
"""Tests only: when set at startup, every pipeline call of `execute` (not the warm-up) raises
RuntimeError with this message. Read once from the server's environment; no request can set it."""


class ErrorKind(Enum):
    """What a failed pipeline call says about the model."""

    FATAL = "fatal"
    """The device is unusable (CUDA error, device-side assert): no later call can succeed."""
    OUT_OF_MEMORY = "out-of-memory"
    """May pass with a smaller batch; repeated, memory is not coming back."""
    OTHER = "other"


_OUT_OF_MEMORY_MARKERS = ("outofmemoryerror", "out of memory")
_FATAL_MARKERS = (
    "acceleratorerror",
    "cuda error",
    "cuda driver error",
    "device-side assert",
    "illegal memory access",
    "cublas_status",
    "cudnn_status",
    "cudnn error",
    "nccl error",
    "ecc error",
)


def classify_error(type_name: str, message: str) -> ErrorKind:
    """The kind of a pipeline exception from its type name and message (pure). Out-of-memory
    is checked first: torch reports it as "CUDA out of memory", which is not a broken device."""
    text = f"{type_name}: {message}".lower()
    if any(marker in text for marker in _OUT_OF_MEMORY_MARKERS):
        return ErrorKind.OUT_OF_MEMORY
    if any(marker in text for marker in _FATAL_MARKERS):
        return ErrorKind.FATAL
    return ErrorKind.OTHER


@dataclass(frozen=True)
class HealthPolicy:
    """How many failed pipeline calls in a row, with no success between, end the model."""

    max_consecutive_failures: int = 5
    max_consecutive_out_of_memory: int = 3


@dataclass(frozen=True)
class ModelHealth:
    """The model's record of pipeline calls; `failed` says why it can no longer serve."""

    consecutive_failures: int = 0
    consecutive_out_of_memory: int = 0
    failed: str | None = None


def record_call(
    health: ModelHealth, error: tuple[str, str] | None, policy: HealthPolicy = HealthPolicy()
) -> ModelHealth:
    """The health after one pipeline call: `error` is (type name, message), None on success
    (pure). e.g. 3 OutOfMemoryErrors in a row -> failed; OOM, success, OOM -> still serving."""
    if health.failed is not None:
        return health
    if error is None:
        return replace(health, consecutive_failures=0, consecutive_out_of_memory=0)
    type_name, message = error
    kind = classify_error(type_name, message)
    failures = health.consecutive_failures + 1
    out_of_memory = health.consecutive_out_of_memory + 1 if kind is ErrorKind.OUT_OF_MEMORY else 0
    failed: str | None = None
    if kind is ErrorKind.FATAL:
        failed = f"device error: {type_name}"
    elif out_of_memory >= policy.max_consecutive_out_of_memory:
        failed = f"{out_of_memory} pipeline calls in a row ran out of memory"
    elif failures >= policy.max_consecutive_failures:
        failed = f"{failures} pipeline calls in a row failed (last: {type_name})"
    return ModelHealth(failures, out_of_memory, failed)


def write_failure(path: Path, reason: str) -> None:
    """Record that the model can no longer serve (atomic: the gate never reads half a file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"failed": reason}))
    os.replace(partial, path)


class HealthFile:
    """The gate's view of the model's health file; a failure, once read, is kept."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._failed: str | None = None

    def failure(self) -> str | None:
        """Why the model can no longer serve, or None while it can (no file: it can)."""
        if self._failed is not None or self.path is None:
            return self._failed
        try:
            text = self.path.read_text()
        except OSError:
            return None
        try:
            reason = json.loads(text).get("failed")
        except (ValueError, AttributeError):
            reason = "unreadable health file"
        if reason:
            self._failed = str(reason)
        return self._failed
