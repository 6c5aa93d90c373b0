"""The router's pure decisions: which tier and pod serve a request (`routing`), per-key rate
limits (`ratelimit`), and why a request is refused (`reasons`). No I/O; time and random draws
are arguments."""
