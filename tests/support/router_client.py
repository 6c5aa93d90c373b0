"""A blocking client of the router's image endpoint, for load loops in threads."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from duotone_router.images import GENERATIONS_PATH


def generate_status(url: str, body: dict[str, Any], timeout_s: float = 60) -> int:
    """POST one generation request to the router at `url`; the HTTP status of the answer."""
    request = urllib.request.Request(  # noqa: S310 - the local router's http URL
        f"{url}{GENERATIONS_PATH}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
