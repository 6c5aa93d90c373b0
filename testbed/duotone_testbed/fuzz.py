"""A raw-bytes fuzz corpus of hostile HTTP/1.1 requests, and a sender that reads their status.

`corpus(seed, template=...)` returns at least `count` complete requests, the same for the same
seed: framing (chunked in pieces, chunk extensions, bad chunk sizes, Content-Length mismatches
and duplicates), encodings (gzip, deflate, br, bogus, charsets), numbers (5,000-digit integers,
1e999, NaN, -0, floats for ints, values past int64), nesting (30,000 deep in 64 KiB), headers
(non-ASCII, latin-1 and invalid UTF-8 Authorization and X-Request-Id, very long, duplicated),
unicode (lone surrogates, NUL, RTL marks, overlong UTF-8), content types, methods and paths.

Every request is complete: a server never has to wait for more bytes to answer it, so a
request that gets no status line is a dropped connection, not a slow client. The body hostile
values are spliced into is `template`, a JSON object the caller picks so that every spliced
variant is refused after parsing (e.g. an unknown model) and none costs model work.

`send(host, port, data)` writes one request over a fresh connection and returns the status of
its final (non-1xx) response line, or what went wrong.
"""

from __future__ import annotations

import gzip
import json
import random
import socket
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Headers = Sequence[tuple[bytes, bytes]]

BODY_LIMIT = 65536
"""The router's default maxBodyBytes: nesting and long values are sized to fit inside it."""

_HOLE = "\x00fuzz-hole\x00"
"""Placeholder for the spliced value while the template is serialised."""


@dataclass(frozen=True)
class FuzzCase:
    """One raw request and the class of hostility it belongs to."""

    kind: str
    """framing, encodings, numbers, nesting, headers, unicode, content-types, methods-paths"""
    name: str
    data: bytes


# ---------------------------------------------------------------------------- building requests


def http_request(
    body: bytes = b"",
    *,
    method: bytes = b"POST",
    path: bytes = b"/",
    version: bytes = b"HTTP/1.1",
    headers: Headers = (),
    content_type: bytes | None = b"application/json",
    framing: str = "length",
    chunks: Sequence[bytes] | None = None,
    host: bytes = b"127.0.0.1",
) -> bytes:
    """A complete request. framing "length": a Content-Length header; "chunked": the body as
    `chunks` (already framed, or split from `body` in one chunk); "none": neither header."""
    lines = [method + b" " + path + b" " + version, b"Host: " + host, b"Connection: close"]
    if content_type is not None:
        lines.append(b"Content-Type: " + content_type)
    lines.extend(name + b": " + value for name, value in headers)
    if framing == "length":
        lines.append(b"Content-Length: " + str(len(body)).encode())
        payload = body
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        payload = b"".join(chunks) if chunks is not None else chunked([body])
    else:
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def chunked(pieces: Sequence[bytes], extension: bytes = b"", trailers: Headers = ()) -> bytes:
    """`pieces` in chunked transfer coding, each chunk with `extension`, then the last chunk."""
    framed = [b"%x%s\r\n%s\r\n" % (len(p), extension, p) for p in pieces if p]
    tail = b"".join(name + b": " + value + b"\r\n" for name, value in trailers)
    return b"".join(framed) + b"0\r\n" + tail + b"\r\n"


def split(body: bytes, parts: int, rng: random.Random) -> list[bytes]:
    """`body` cut at `parts - 1` random places (pieces may be one byte long)."""
    if len(body) < 2 or parts < 2:
        return [body]
    cuts = sorted(rng.sample(range(1, len(body)), min(parts - 1, len(body) - 1)))
    return [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]


def leaf_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path (keys and indices) of every scalar in a JSON value."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from leaf_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaf_paths(item, (*prefix, index))
    else:
        yield prefix


def splice(template: Mapping[str, Any], path: tuple[Any, ...], fragment: bytes) -> bytes:
    """`template` as JSON with the value at `path` replaced by the raw bytes `fragment` (which
    need not be valid JSON, nor UTF-8)."""
    document = json.loads(json.dumps(template))
    holder = document
    for step in path[:-1]:
        holder = holder[step]
    holder[path[-1]] = _HOLE
    text = json.dumps(document).encode()
    return text.replace(json.dumps(_HOLE).encode(), fragment, 1)


# ---------------------------------------------------------------------------- hostile values

NUMBERS: Mapping[str, bytes] = {
    "5000-digit integer": b"9" * 5000,
    "negative 5000-digit integer": b"-" + b"9" * 5000,
    "5000-digit float": b"1" + b"0" * 5000 + b".5",
    "5000-digit fraction": b"0." + b"0" * 5000 + b"1",
    "1e999": b"1e999",
    "-1e999": b"-1e999",
    "1e-999": b"1e-999",
    "NaN": b"NaN",
    "Infinity": b"Infinity",
    "-Infinity": b"-Infinity",
    "-0": b"-0",
    "-0.0": b"-0.0",
    "float for an int": b"1.5",
    "integral float": b"2.0",
    "exponent int": b"1e3",
    "2^31": str(2**31).encode(),
    "2^63": str(2**63).encode(),
    "2^64": str(2**64).encode(),
    "-2^63-1": str(-(2**63) - 1).encode(),
    "-1": b"-1",
    "zero": b"0",
    "huge exponent": b"1e99999999999999999999",
    "hex": b"0x10",
    "leading zero": b"01",
    "plus sign": b"+1",
    "bare fraction": b".5",
    "trailing dot": b"1.",
    "dangling exponent": b"1e",
    "double minus": b"--1",
    "true": b"true",
    "null": b"null",
    "number as string": b'"7"',
    "empty string": b'""',
    "empty array": b"[]",
    "empty object": b"{}",
}

UNICODE: Mapping[str, bytes] = {
    "lone high surrogate": b'"\\ud800"',
    "lone low surrogate": b'"a\\udfffb"',
    "reversed pair": b'"\\ude00\\ud83d"',
    "valid pair": b'"\\ud83d\\ude00"',
    "escaped NUL": b'"a\\u0000b"',
    "raw NUL": b'"a\x00b"',
    "raw control characters": b'"\x01\x1f\x7f"',
    "RTL override": '"\u202eevil\u202c"'.encode(),
    "zero-width and BOM": '"\u200b\u200d\ufeff"'.encode(),
    "combining marks": ('"' + "e\u0301" * 200 + '"').encode(),
    "astral text": ('"' + "\U0001f600" * 100 + '"').encode(),
    "overlong slash": b'"\xc0\xaf"',
    "overlong NUL": b'"\xc0\x80"',
    "CESU surrogate": b'"\xed\xa0\x80"',
    "invalid bytes": b'"\xff\xfe\xfd"',
    "truncated sequence": b'"\xe2\x82"',
    "latin-1": b'"caf\xe9"',
    "noncharacters": '"\ufffe\uffff"'.encode(),
    "line separators": '"\u2028\u2029\u0085"'.encode(),
    "unterminated escape": b'"\\u12"',
    "bad escape": b'"\\x41"',
    "unterminated string": b'"abc',
}


def _nested(opening: bytes, closing: bytes, size: int) -> bytes:
    depth = size // (len(opening) + len(closing))
    return opening * depth + closing * depth


NESTING: Mapping[str, bytes] = {
    "30,000 arrays": _nested(b"[", b"]", 60000),
    "deep objects": _nested(b'{"a":', b"}", 60000),
    "mixed arrays and objects": _nested(b'[{"a":', b"}]", 60000),
    "unclosed arrays": b"[" * 30000,
    "unclosed objects": b'{"a":' * 12000,
    "wide array": b"[" + b"0," * 25000 + b"0]",
    "many strings": b"[" + b'"a",' * 12000 + b'"a"]',
    "just deep enough": _nested(b"[", b"]", 2 * 64),
    "brackets in a string": b'"' + b"[" * 30000 + b'"',
    "escaped quotes then nesting": b'"\\"\\"\\"", "x": ' + b"[" * 30000,
}


def _one_header(
    name: bytes, values: Mapping[str, bytes], others: Headers = ()
) -> list[tuple[str, Headers]]:
    return [(f"{name.decode()}: {label}", [*others, (name, v)]) for label, v in values.items()]


HOSTILE_HEADER_VALUES: Mapping[str, bytes] = {
    "invalid UTF-8": b"Bearer \xff\xfe\xfd\x80",
    "latin-1": b"Bearer caf\xe9",
    "UTF-8 non-ASCII": "Bearer cl\u00e9 \u202e\U0001f600".encode(),
    "overlong UTF-8": b"Bearer \xc0\xaf",
    "CESU surrogate": b"Bearer \xed\xa0\x80",
    "very long": b"Bearer " + b"k" * 8000,
    "too long for the server": b"Bearer " + b"k" * 70000,
    "empty": b"",
    "only the scheme": b"Bearer",
    "tab inside": b"Bearer a\tb",
    "control bytes": b"Bearer \x01\x7f",
}


def header_cases(authorization: bytes | None) -> list[tuple[str, Headers]]:
    """Hostile header sets (each replaces the request's Authorization)."""
    good: Headers = [(b"Authorization", authorization)] if authorization else []
    cases = _one_header(b"Authorization", HOSTILE_HEADER_VALUES)
    cases += _one_header(
        b"X-Request-Id",
        {
            **HOSTILE_HEADER_VALUES,
            "id with spaces": b"a b c",
            "id with quotes and JSON": b'"}{"error":1',
            "id of 8 KiB": b"r" * 8000,
        },
        good,
    )
    cases += [
        ("duplicated Authorization", [*good, (b"Authorization", b"Bearer wrong")]),
        ("duplicated Authorization, bad first", [(b"Authorization", b"Bearer wrong"), *good]),
        ("duplicated X-Request-Id", [*good, (b"X-Request-Id", b"a"), (b"X-Request-Id", b"b")]),
        ("duplicated Host", [*good, (b"Host", b"evil.example")]),
        ("two hundred headers", [*good, *[(b"X-Fill-%d" % i, b"v") for i in range(200)]]),
        ("header name with a space", [*good, (b"X Bad", b"v")]),
        ("header name with non-ASCII", [*good, (b"X-\xe9", b"v")]),
        ("header with NUL", [*good, (b"X-Nul", b"a\x00b")]),
        ("obsolete line folding", [*good, (b"X-Fold", b"a\r\n b")]),
        ("Expect: 100-continue", [*good, (b"Expect", b"100-continue")]),
        ("Expect: bogus", [*good, (b"Expect", b"something-else")]),
        ("Content-Type twice", [*good, (b"Content-Type", b"text/plain")]),
        ("X-Duotone-Tier non-ASCII", [*good, (b"X-Duotone-Tier", b"fl\xe9gship")]),
        ("X-Forwarded-For garbage", [*good, (b"X-Forwarded-For", b"\xff, ::1, <script>")]),
    ]
    return cases


CONTENT_TYPES: Mapping[str, bytes | None] = {
    "none": None,
    "text/plain": b"text/plain",
    "form": b"application/x-www-form-urlencoded",
    "multipart": b"multipart/form-data; boundary=xyz",
    "charset latin-1": b"application/json; charset=latin-1",
    "charset utf-16": b"application/json; charset=utf-16",
    "charset bogus": b"application/json; charset=\xff\xfe",
    "empty": b"",
    "very long": b"application/json; " + b"x=y; " * 1500,
    "octet-stream": b"application/octet-stream",
}


# ---------------------------------------------------------------------------- the corpus


def corpus(
    seed: int,
    *,
    template: Mapping[str, Any],
    path: str = "/v1/images/generations",
    authorization: str | None = None,
    count: int = 1000,
    body_limit: int = BODY_LIMIT,
) -> list[FuzzCase]:
    """At least `count` hostile requests to `path`, deterministic in `seed`. `template` is the
    JSON object hostile values are spliced into (one leaf at a time); `authorization` is sent
    with every request whose hostility is elsewhere (header cases replace it); `body_limit` is
    the target's request body limit, which the oversized cases exceed."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible corpus, not a secret
    target = path.encode()
    auth: Headers = [(b"Authorization", authorization.encode())] if authorization else []
    body = json.dumps(template).encode()
    leaves = list(leaf_paths(template))
    cases: list[FuzzCase] = []

    def add(kind: str, name: str, data: bytes) -> None:
        cases.append(FuzzCase(kind, name, data))

    def post(payload: bytes, **options: Any) -> bytes:
        options.setdefault("headers", auth)
        return http_request(payload, path=target, **options)

    for label, values in (("numbers", NUMBERS), ("unicode", UNICODE), ("nesting", NESTING)):
        for leaf in leaves:
            where = ".".join(str(step) for step in leaf)
            for name, fragment in values.items():
                add(label, f"{where}: {name}", post(splice(template, leaf, fragment)))
        for name, fragment in values.items():
            add(label, f"whole body: {name}", post(fragment))
            add(
                label,
                f"unknown field: {name}",
                post(splice({**template, "zz": 0}, ("zz",), fragment)),
            )

    cases.extend(_framing_cases(body, target, auth, rng, body_limit))
    cases.extend(_encoding_cases(body, target, auth))
    for name, headers in header_cases(auth[0][1] if auth else None):
        add("headers", name, post(body, headers=headers))
    for name, content_type in CONTENT_TYPES.items():
        add("content-types", name, post(body, content_type=content_type))
    cases.extend(_method_path_cases(body, target, auth))

    # Seeded variations up to `count`: a random hostile value, sent framed at random.
    pools = [("numbers", NUMBERS), ("unicode", UNICODE), ("nesting", NESTING)]
    while len(cases) < count:
        kind, values = rng.choice(pools)
        name, fragment = rng.choice(sorted(values.items()))
        leaf = rng.choice(leaves)
        payload = splice(template, leaf, fragment)
        pieces = split(payload, rng.randint(2, 8), rng)
        extension = rng.choice([b"", b";a=b", b';name="q"', b";" + b"x" * 100])
        data = post(payload, framing="chunked", chunks=[chunked(pieces, extension)])
        add(kind, f"{kind} {name} at {'.'.join(map(str, leaf))}, {len(pieces)} chunks", data)
    return cases


def _framing_cases(
    body: bytes, target: bytes, auth: Headers, rng: random.Random, body_limit: int
) -> list[FuzzCase]:
    def post(**options: Any) -> bytes:
        options.setdefault("headers", auth)
        options.setdefault("framing", "none")
        return http_request(options.pop("payload", b""), path=target, **options)

    length = b"%d" % len(body)
    raw: dict[str, bytes] = {
        "one chunk": post(framing="chunked", chunks=[chunked([body])]),
        "two chunks": post(framing="chunked", chunks=[chunked(split(body, 2, rng))]),
        "byte chunks": post(framing="chunked", chunks=[chunked(split(body, len(body), rng))]),
        "chunk extensions": post(framing="chunked", chunks=[chunked(split(body, 3, rng), b";a=1")]),
        "long chunk extension": post(
            framing="chunked", chunks=[chunked([body], b";" + b"e" * 5000)]
        ),
        "trailers": post(
            framing="chunked", chunks=[chunked([body], trailers=[(b"X-Trailer", b"1")])]
        ),
        "non-hex chunk size": post(framing="chunked", chunks=[b"zz\r\n" + body + b"\r\n0\r\n\r\n"]),
        "negative chunk size": post(framing="chunked", chunks=[b"-5\r\nhello\r\n0\r\n\r\n"]),
        "chunk size with spaces": post(framing="chunked", chunks=[b" 5 \r\nhello\r\n0\r\n\r\n"]),
        "chunk shorter than its size line then more": post(
            framing="chunked", chunks=[b"3\r\nhello\r\n0\r\n\r\n"]
        ),
        "huge chunk size, more data than the limit": post(
            framing="chunked", chunks=[b"ffffffff\r\n" + b"x" * (body_limit + 4096)]
        ),
        "chunk size overflowing 64 bits": post(
            framing="chunked", chunks=[b"1" + b"0" * 40 + b"\r\nabc\r\n0\r\n\r\n"]
        ),
        "missing CRLF after data": post(framing="chunked", chunks=[b"5\r\nhello0\r\n\r\n"]),
        "LF-only chunk lines": post(framing="chunked", chunks=[b"5\nhello\n0\n\n"]),
        "empty body, chunked": post(framing="chunked", chunks=[b"0\r\n\r\n"]),
        "body over the limit, chunked": post(
            framing="chunked", chunks=[chunked(split(b"x" * (body_limit + 10), 5, rng))]
        ),
        "body over the limit, with length": post(
            payload=b"x" * (body_limit + 10), framing="length"
        ),
        "declared length over the limit, short body": post(
            payload=body, headers=[*auth, (b"Content-Length", b"%d" % (10 * body_limit))]
        ),
        "declared length of 20 digits": post(
            payload=body, headers=[*auth, (b"Content-Length", b"9" * 20)]
        ),
        "length shorter than the body": post(
            payload=body, headers=[*auth, (b"Content-Length", b"%d" % (len(body) // 2))]
        ),
        "length zero with a body": post(payload=body, headers=[*auth, (b"Content-Length", b"0")]),
        "duplicated equal lengths": post(
            payload=body, headers=[*auth, (b"Content-Length", length), (b"Content-Length", length)]
        ),
        "duplicated different lengths": post(
            payload=body,
            headers=[
                *auth,
                (b"Content-Length", length),
                (b"Content-Length", b"%d" % (len(body) - 1)),
            ],
        ),
        "length list": post(
            payload=body, headers=[*auth, (b"Content-Length", length + b", " + length)]
        ),
        "negative length": post(payload=body, headers=[*auth, (b"Content-Length", b"-1")]),
        "length with plus": post(payload=body, headers=[*auth, (b"Content-Length", b"+" + length)]),
        "length in hex": post(payload=body, headers=[*auth, (b"Content-Length", b"0x10")]),
        "length and chunked": post(
            payload=chunked([body]),
            headers=[*auth, (b"Content-Length", length), (b"Transfer-Encoding", b"chunked")],
        ),
        "chunked twice": post(
            payload=chunked([body]), headers=[*auth, (b"Transfer-Encoding", b"chunked, chunked")]
        ),
        "gzip transfer coding": post(
            payload=chunked([_gzip(body)]),
            headers=[*auth, (b"Transfer-Encoding", b"gzip, chunked")],
        ),
        "unknown transfer coding": post(
            payload=body, headers=[*auth, (b"Transfer-Encoding", b"bogus")]
        ),
        "identity transfer coding": post(
            payload=body,
            headers=[*auth, (b"Transfer-Encoding", b"identity"), (b"Content-Length", length)],
        ),
        "no length, no chunking": post(payload=b""),
        "HTTP/1.0 with a length": post(payload=body, framing="length", version=b"HTTP/1.0"),
        "HTTP/1.0 chunked": post(framing="chunked", chunks=[chunked([body])], version=b"HTTP/1.0"),
        "two pipelined requests": post(payload=body, framing="length")
        + http_request(body, path=target, headers=auth),
    }
    return [FuzzCase("framing", name, data) for name, data in raw.items()]


def _gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)  # no timestamp: the same bytes for the same seed


def _encoding_cases(body: bytes, target: bytes, auth: Headers) -> list[FuzzCase]:
    bomb = _gzip(b"{" + b" " * (64 * BODY_LIMIT) + b"}")
    bodies: dict[str, tuple[bytes, bytes]] = {
        "gzip": (b"gzip", _gzip(body)),
        "x-gzip": (b"x-gzip", _gzip(body)),
        "deflate": (b"deflate", zlib.compress(body)),
        "raw deflate": (b"deflate", zlib.compress(body)[2:-4]),
        "br (bytes that are not brotli)": (b"br", b"\x8b\x02\x80" + body),
        "zstd (bytes that are not zstd)": (b"zstd", b"\x28\xb5\x2f\xfd" + body),
        "gzip bomb, 4 MiB of spaces": (b"gzip", bomb),
        "gzip header, plain body": (b"gzip", body),
        "gzip twice": (b"gzip, gzip", _gzip(_gzip(body))),
        "bogus coding": (b"bogus", body),
        "identity": (b"identity", body),
        "identity, gzip": (b"identity, gzip", _gzip(body)),
        "non-ASCII coding": (b"gz\xefp", body),
        "empty coding": (b"", body),
        "utf-16 body": (b"identity", body.decode().encode("utf-16")),
        "utf-32 body": (b"identity", body.decode().encode("utf-32")),
        "UTF-8 BOM": (b"identity", b"\xef\xbb\xbf" + body),
    }
    cases = []
    for name, (coding, payload) in bodies.items():
        headers = [*auth, (b"Content-Encoding", coding)]
        cases.append(
            FuzzCase("encodings", name, http_request(payload, path=target, headers=headers))
        )
    chunked_gzip = http_request(
        b"",
        path=target,
        headers=[*auth, (b"Content-Encoding", b"gzip")],
        framing="chunked",
        chunks=[chunked([bomb[:1000], bomb[1000:]])],
    )
    cases.append(FuzzCase("encodings", "gzip bomb, chunked", chunked_gzip))
    return cases


def _method_path_cases(body: bytes, target: bytes, auth: Headers) -> list[FuzzCase]:
    methods = [b"GET", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"TRACE", b"FOO", b"post"]
    cases = [
        FuzzCase(
            "methods-paths",
            method.decode(),
            http_request(body, method=method, path=target, headers=auth),
        )
        for method in methods
    ]
    paths = {
        "trailing slash": target + b"/",
        "double slash": b"/" + target,
        "query string": target + b"?model=x&n=99999999999999999999",
        "encoded dot segments": target + b"/%2e%2e/%2e%2e/metrics",
        "dot segments": b"/../../etc/passwd",
        "percent garbage": target + b"%zz%",
        "non-ASCII path": target + b"/\xff\xfe",
        "very long path": target + b"/" + b"a" * 7000,
        "too long path": target + b"/" + b"a" * 70000,
        "fragment": target + b"#frag",
        "absolute form": b"http://evil.example" + target,
        "asterisk": b"*",
        "metrics": b"/metrics",
        "no such path": b"/v2/models/duotone/infer",
        "empty path": b"",
    }
    cases += [
        FuzzCase("methods-paths", name, http_request(body, path=path, headers=auth))
        for name, path in paths.items()
    ]
    versions = [b"HTTP/1.2", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/1.1x", b"HTTPS/1.1", b"http/1.1"]
    cases += [
        FuzzCase(
            "methods-paths",
            f"version {version.decode()}",
            http_request(body, path=target, version=version, headers=auth),
        )
        for version in versions
    ]
    cases += [
        FuzzCase(
            "methods-paths",
            "garbage request line",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ),
        FuzzCase("methods-paths", "request line only", b"POST " + target + b" HTTP/1.1\r\n\r\n"),
        FuzzCase("methods-paths", "missing version", b"POST " + target + b"\r\n\r\n"),
        FuzzCase(
            "methods-paths",
            "no Host",
            b"POST " + target + b" HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ),
    ]
    return cases


# ---------------------------------------------------------------------------- sending


@dataclass(frozen=True)
class Exchange:
    """What a server answered one raw request: its final status, or why there was none."""

    status: int | None
    error: str | None = None
    seconds: float = 0.0


def send(host: str, port: int, data: bytes, timeout_s: float = 10.0) -> Exchange:
    """Write `data` over a new connection and read the first final (non-1xx) status line.

    A server may answer and close before it has read everything (413 at the limit): a write
    that fails after that is not an error as long as the status line can still be read."""
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            try:
                connection.sendall(data)
            except OSError as error:
                write_error: OSError | None = error
            else:
                write_error = None
            status = _read_status(connection, started + timeout_s)
    except OSError as error:
        return Exchange(None, f"{type(error).__name__}: {error}", time.monotonic() - started)
    if status is None:
        reason = f"no status line (write: {write_error})" if write_error else "no status line"
        return Exchange(None, reason, time.monotonic() - started)
    return Exchange(status, None, time.monotonic() - started)


def _read_status(connection: socket.socket, deadline: float) -> int | None:
    received = b""
    while True:
        line, found, _ = received.partition(b"\r\n")
        if found:
            status = _status_of(line)
            if status is None or status >= 200:
                return status
            end = received.find(b"\r\n\r\n")
            if end >= 0:  # an interim answer (100 Continue): the final one follows
                received = received[end + 4 :]
                continue
        connection.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = connection.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return None
        if not chunk:
            return None
        received += chunk


def _status_of(head: bytes) -> int | None:
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return None
    return int(parts[1])


def histogram(exchanges: Sequence[Exchange]) -> dict[str, int]:
    """Count per status ("none" for a request without an answer), sorted by status."""
    counts: dict[str, int] = {}
    for exchange in exchanges:
        key = str(exchange.status) if exchange.status is not None else "none"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
