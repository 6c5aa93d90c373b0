"""API keys from a mounted Secret: one entry per key, the entry's name is the key's name.

`kubectl create secret generic sd-keys --from-literal=search-team=<random>` gives the key
named "search-team" (what metrics show; the secret value never leaves this module).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

BEARER = "bearer "


@dataclass(frozen=True)
class ApiKeys:
    """Known keys as (name, secret) pairs."""

    keys: tuple[tuple[str, bytes], ...]

    def identify(self, presented: str) -> str | None:
        """The name of the key `presented` matches, or None. Compares against every key in
        constant time, so timing reveals neither which key nor how much of it matched."""
        given = presented.encode()
        match = None
        for name, secret in self.keys:
            if hmac.compare_digest(given, secret):
                match = name
        return match


def load_api_keys(directory: Path) -> ApiKeys:
    """Every regular file in the Secret's mount (Kubernetes' `..data` entries are skipped)."""
    keys = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        secret = entry.read_bytes().strip()
        if secret:
            keys.append((entry.name, secret))
    return ApiKeys(tuple(keys))


def bearer_token(authorization: str | None) -> str | None:
    """`Bearer abc` -> `abc`; anything else -> None."""
    if authorization is None or not authorization.lower().startswith(BEARER):
        return None
    token = authorization[len(BEARER) :].strip()
    return token or None
