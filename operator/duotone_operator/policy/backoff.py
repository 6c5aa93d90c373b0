"""How long to wait before retrying an IMD whose spec cannot work yet (pure)."""

from __future__ import annotations


def retry_delay(retry: int, *, base_seconds: float, max_seconds: float) -> float:
    """Exponential backoff: base, 2x base, 4x base, ... capped.

    e.g. base 5 s, cap 300 s: 5, 10, 20, 40, 80, 160, 300, 300 ... so a missing PVC costs a
    handful of API calls an hour, not a hot loop, and is picked up within the cap once created.
    """
    if retry < 0:
        raise ValueError("retry counts from 0")
    return float(min(max_seconds, base_seconds * 2 ** min(retry, 32)))
