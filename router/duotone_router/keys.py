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
        constant time, so timing reveals neither which key nor how much of it matched.

        `presented` may hold any bytes a client sent: HTTP servers decode header bytes that are
        not UTF-8 as lone surrogates (surrogateescape), which turn back into those bytes here.
        """
        given = header_bytes(presented)
        if given is None:
            return None
        match = None
        for name, secret in self.keys:
            if hmac.compare_digest(given, secret):
                match = name
        return match


def header_bytes(value: str) -> bytes | None:
    """A header value as the bytes the client sent (aiohttp decodes them as UTF-8 with
    surrogateescape), or None for text no bytes decode to (a lone surrogate outside that
    escape range), which can match no key."""
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return None


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
