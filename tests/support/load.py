"""Steady request load through the official OpenAI SDK, recorded with timestamps.

`SteadyLoad(url, clients=4, arguments=...)` runs `clients` threads, each sending one image
request after another until `stop()`; every request becomes a `Sent` (start, end, status).
Tests assert on the record (counts of non-2xx, failures after an instant), never on timings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import openai


@dataclass(frozen=True)
class Sent:
    started: float
    ended: float
    status: int
    """HTTP status; 0 when no answer came (connection refused or reset, timeout)."""
    tier: str


@dataclass
class SteadyLoad:
    url: str
    clients: int = 4
    arguments: Mapping[str, Any] = field(default_factory=lambda: {"prompt": "steady"})
    timeout_s: float = 60
    sent: list[Sent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> SteadyLoad:
        for _ in range(self.clients):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _client(self) -> None:
        client = openai.OpenAI(
            base_url=f"{self.url}/v1", api_key="test", max_retries=0, timeout=self.timeout_s
        )
        while not self._stop.is_set():
            started = time.monotonic()
            status, tier = 0, "-"
            try:
                raw = client.images.with_raw_response.generate(
                    response_format="b64_json", **self.arguments
                )
                status, tier = raw.http_response.status_code, raw.headers.get("x-duotone-tier", "?")
            except openai.APIStatusError as error:
                status = error.status_code
            except openai.APIConnectionError:
                status = 0
            with self._lock:
                self.sent.append(Sent(started, time.monotonic(), status, tier))
        client.close()

    def count(self) -> int:
        with self._lock:
            return len(self.sent)

    def stop(self) -> list[Sent]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)
        with self._lock:
            return list(self.sent)


def failures(sent: list[Sent]) -> list[Sent]:
    return [s for s in sent if not 200 <= s.status < 300]
