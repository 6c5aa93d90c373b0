"""Reading an edit's multipart form, bounded: its text fields and its files.

The OpenAI SDKs send `POST /v1/images/edits` as multipart/form-data: text fields (prompt, n,
size, ...) and files (`image`, or `image[]` for several, and `mask`). The form is read part by
part with aiohttp's reader; nothing beyond the limits is ever held: the whole body (`limit`),
each file (`file_limit`), each text field (MAX_FIELD_BYTES) and the number of parts
(MAX_FORM_PARTS). Broken framing is a 400 naming the body, never a 5xx.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from aiohttp import BodyPartReader, web

from duotone_router import guards
from duotone_router.policy.reasons import Reason, Refused

MAX_FORM_PARTS: Final = 64
"""An edit has at most 16 images, a mask and about 20 text fields."""
MAX_FIELD_BYTES: Final = 128 * 1024
"""A text field: a 20,000-character prompt is at most 80 KiB of UTF-8."""
FILE_FIELDS: Final = {"image": "image", "image[]": "image", "mask": "mask"}
"""Form names of files -> the request field they fill."""
CHUNK_BYTES: Final = 64 * 1024
FORM_OVERHEAD_BYTES: Final = 256 * 1024
"""Everything of an edit's body besides its files: text fields, part headers, boundaries."""


@dataclass
class Form:
    """An edit's form: text fields by name, files by request field (`image`, `mask`)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[bytes]] = field(default_factory=dict)


def edit_body_limits(file_limits: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """(body limit, file limit) for tiers with these (maxInputImageBytes, maxInputImages): the
    largest file any tier takes, and a body of that many files plus a mask (pure)."""
    if not file_limits:
        return FORM_OVERHEAD_BYTES, 0
    file_limit = max(size for size, _ in file_limits)
    body = max(size * (count + 1) for size, count in file_limits)
    return body + FORM_OVERHEAD_BYTES, file_limit


def _too_large(limit: int) -> Refused:
    return Refused(
        Reason.BODY_TOO_LARGE, f"body: larger than the limit of {limit} bytes", param="body"
    )


def _broken(detail: str) -> Refused:
    return Refused(Reason.INVALID_FORM, f"body: not a readable multipart form ({detail})", "body")


async def _read_part(part: BodyPartReader, cap: int, name: str, budget: list[int]) -> bytes:
    data = bytearray()
    while chunk := await part.read_chunk(CHUNK_BYTES):
        data += chunk
        budget[0] -= len(chunk)
        if budget[0] < 0:
            raise _too_large(budget[1])
        if len(data) > cap:
            raise Refused(
                Reason.BODY_TOO_LARGE, f"{name}: larger than the limit of {cap} bytes", name
            )
    return bytes(data)


async def read_form(request: web.Request, *, limit: int, file_limit: int) -> Form:
    """The form of an edit request; Refused for a body that is not one, or is too large."""
    guards.check_content_encoding(request.headers.getall("Content-Encoding", ()))
    if request.content_type != "multipart/form-data":
        raise Refused(
            Reason.INVALID_FORM,
            f"body: an edit is sent as multipart/form-data, not {request.content_type[:64]!r}",
            param="body",
        )
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    form = Form()
    budget = [limit, limit]
    try:
        reader = await request.multipart()
        for _ in range(MAX_FORM_PARTS + 1):
            part = await reader.next()
            if part is None:
                return form
            if not isinstance(part, BodyPartReader):
                raise _broken("a part nests another form")
            name = (part.name or "")[:100]
            target = FILE_FIELDS.get(name)
            if target is not None:
                data = await _read_part(part, file_limit, target, budget)
                form.files.setdefault(target, []).append(data)
                continue
            data = await _read_part(part, MAX_FIELD_BYTES, name or "body", budget)
            if name in form.fields:
                raise Refused(Reason.INVALID_VALUE, f"{name}: sent more than once", param=name)
            try:
                form.fields[name] = data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise Refused(Reason.INVALID_VALUE, f"{name}: is not UTF-8", param=name) from error
        raise _broken(f"more than {MAX_FORM_PARTS} parts")
    except (Refused, asyncio.CancelledError):
        raise
    except Exception as error:  # aiohttp's reader raises several kinds on broken framing
        raise _broken(f"{type(error).__name__}: {str(error)[:100]}") from error
