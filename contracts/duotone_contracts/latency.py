"""A sliding window of request latencies and its median (pure; time is passed in).

The router's SLO-aware overflow reads a tier's median from its own requests
(`duotone_router.policy.routing`), and a step-batched tier pod exports the median of its
requests, which Triton's own summary does not measure for a decoupled model
(`duotone_runtime.triton_model`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_LATENCY_SAMPLES = 5
"""A recent p50 counts only over at least this many requests (one slow image is not a trend)."""


@dataclass(frozen=True)
class LatencyWindow:
    """Recent request latencies of a tier: (finished_at, milliseconds), oldest first."""

    window_s: float = 10.0
    samples: tuple[tuple[float, float], ...] = field(default=())

    def add(self, now: float, latency_ms: float, *, limit: int = 200) -> LatencyWindow:
        kept = self.prune(now).samples[-(limit - 1) :] if limit > 1 else ()
        return LatencyWindow(self.window_s, (*kept, (now, latency_ms)))

    def prune(self, now: float) -> LatencyWindow:
        start = now - self.window_s
        return LatencyWindow(self.window_s, tuple(s for s in self.samples if s[0] >= start))

    def p50(self, now: float, *, min_samples: int = MIN_LATENCY_SAMPLES) -> float | None:
        """Median over the window, or None with fewer than `min_samples` samples."""
        values = sorted(ms for _, ms in self.prune(now).samples)
        if len(values) < min_samples:
            return None
        middle = len(values) // 2
        if len(values) % 2:
            return values[middle]
        return (values[middle - 1] + values[middle]) / 2
