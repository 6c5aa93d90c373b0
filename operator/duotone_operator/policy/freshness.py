"""Is the IMD watch alive? Kopf's own liveness only proves its event loop runs.

A watch that silently stalls (a known Kopf failure mode) stops delivering events while the API
server moves on. The tracker records the resourceVersion of every IMD event the watch delivers;
a background check lists IMDs on a fixed period and compares (`check`). An IMD whose listed
version the watch has not delivered for longer than the grace period means the watch is stale:
the liveness probe, which only reads `last_stale`, fails and the kubelet restarts the operator,
which re-lists and resumes. A list that fails changes nothing (an API-server outage is not a
dead watch).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class WatchFreshness:
    """Watch-delivered versions vs. listed versions, with time passed in."""

    grace_seconds: float = 60.0
    seen: dict[str, str] = field(default_factory=dict)
    behind_since: dict[str, float] = field(default_factory=dict)
    last_stale: list[str] = field(default_factory=list)
    """The verdict of the latest `check`: what the liveness probe reports."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def delivered(self, uid: str, resource_version: str, *, deleted: bool = False) -> None:
        """The watch delivered an event for `uid`."""
        with self._lock:
            if deleted:
                self.seen.pop(uid, None)
            else:
                self.seen[uid] = resource_version
            self.behind_since.pop(uid, None)

    def stale(self, listed: Mapping[str, str], now: float) -> list[str]:
        """UIDs whose listed version the watch has not delivered for over the grace period."""
        with self._lock:
            for uid in list(self.behind_since):
                if uid not in listed or listed[uid] == self.seen.get(uid):
                    del self.behind_since[uid]
            late = []
            for uid, version in listed.items():
                if self.seen.get(uid) == version:
                    continue
                since = self.behind_since.setdefault(uid, now)
                if now - since > self.grace_seconds:
                    late.append(uid)
            return sorted(late)

    def check(self, listed: Mapping[str, str], now: float) -> list[str]:
        """`stale`, kept as the verdict the liveness probe reads."""
        self.last_stale = self.stale(listed, now)
        return self.last_stale
