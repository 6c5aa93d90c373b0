"""The shipped moderation check: a blocklist of whole words after NFKC and case folding."""

from __future__ import annotations

import pytest

from duotone_router.policy.moderation import Blocklist

pytestmark = pytest.mark.unit

CHECK = Blocklist.of(["forbidden", "two words", "  "])


@pytest.mark.parametrize(
    ("prompt", "blocked"),
    [
        pytest.param("a forbidden cat", True, id="a whole word"),
        pytest.param("FORBIDDEN", True, id="any case"),
        pytest.param(
            "\uff26\uff2f\uff32\uff22\uff29\uff24\uff24\uff25\uff2e", True, id="fullwidth"
        ),
        pytest.param("forbidden!", True, id="before punctuation"),
        pytest.param("two   words here", True, id="phrase across spaces"),
        pytest.param("unforbiddenness", False, id="inside another word"),
        pytest.param("two-words", False, id="joined otherwise"),
        pytest.param("a cat", False, id="clean"),
    ],
)
def test_blocklist(prompt: str, blocked: bool) -> None:
    verdict = CHECK.verdict(prompt)
    assert (verdict is not None) == blocked
    if verdict is not None:
        assert verdict.startswith("prompt:")
        assert "forbidden" not in verdict.casefold()


def test_an_empty_blocklist_allows_everything() -> None:
    assert Blocklist.of([]).verdict("anything forbidden") is None
    assert Blocklist.of(["", " "]).verdict("anything") is None
