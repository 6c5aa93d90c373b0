"""The moderation check: is a prompt refused before any tier sees it (pure).

A check is anything with `verdict(prompt) -> str | None` (None: allowed; otherwise why it was
refused, said without repeating the matched text). The shipped check is a blocklist from the
routing table (`router.moderation.blockedTerms` in the IMD): a term matches as whole words,
case-insensitively, after Unicode NFKC normalisation and case folding, so `BAD` (also in
fullwidth letters) matches `bad` while `badge` does not. Another check (a classifier behind
an HTTP call) plugs in behind the same protocol in an adapter; the API's `moderation`
parameter ("auto" or "low") does not lower the operator's blocklist.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class ModerationCheck(Protocol):
    """A prompt check."""

    def verdict(self, prompt: str) -> str | None:
        """None when `prompt` may be served; otherwise why not (without echoing it)."""


def normalise(text: str) -> str:
    """The form terms and prompts are compared in: NFKC, case-folded."""
    return unicodedata.normalize("NFKC", text).casefold()


@dataclass(frozen=True)
class Blocklist:
    """Refuses a prompt that holds any of `terms` as whole words."""

    terms: tuple[str, ...]
    _pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        words = sorted({normalise(t).strip() for t in self.terms} - {""}, key=len, reverse=True)
        pattern = None
        if words:
            alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
            pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")
        object.__setattr__(self, "_pattern", pattern)

    @classmethod
    def of(cls, terms: Sequence[str]) -> Blocklist:
        return cls(tuple(terms))

    def verdict(self, prompt: str) -> str | None:
        if self._pattern is None or self._pattern.search(normalise(prompt)) is None:
            return None
        return "prompt: refused by this endpoint's moderation policy (a blocked term)"
