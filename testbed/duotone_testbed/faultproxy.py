"""A TCP proxy on loopback that passes, blackholes or resets traffic: network faults between
the operator and the API server, injected on demand.

`FaultProxy(host, port).start()` listens on 127.0.0.1 (a free port) and forwards every
connection to host:port (TLS passes through untouched). `blackhole()` stops forwarding: bytes
already in flight and new connections are held without an answer, as a dropped route does.
`reset()` aborts every connection (RST) and forwards again; `refuse()` aborts every connection
and every new one until `restore()`. It runs its own event loop in a thread, so tests call it
synchronously.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Literal

Mode = Literal["pass", "blackhole", "refuse"]


class FaultProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.mode: Mode = "pass"
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._flowing: asyncio.Event | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._server: asyncio.Server | None = None

    # ------------------------------------------------------------------ control (any thread)

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def blackhole(self) -> None:
        self._call(self._set, "blackhole", False)

    def reset(self) -> None:
        """Abort every connection, then forward again."""
        self._call(self._abort_all)
        self._call(self._set, "pass", True)

    def refuse(self) -> None:
        """Abort every connection and every new one (a server that is down)."""
        self._call(self._set, "refuse", True)
        self._call(self._abort_all)

    def restore(self) -> None:
        self._call(self._set, "pass", True)

    def stop(self) -> None:
        async def close() -> None:
            self._abort_all()
            if self._server is not None:
                self._server.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _call(self, function: object, *args: object) -> None:
        async def run() -> None:
            function(*args)  # type: ignore[operator]

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    # ------------------------------------------------------------------ the loop's side

    def _set(self, mode: Mode, flowing: bool) -> None:
        self.mode = mode
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    def _abort_all(self) -> None:
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        transport = writer.transport
        self._transports.add(transport)
        assert self._flowing is not None
        if self.mode == "refuse":
            transport.abort()
            return
        await self._flowing.wait()  # a blackholed connect is held without an answer
        if transport.is_closing():
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            transport.abort()
            return
        self._transports.add(up_writer.transport)
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        for side in (writer, up_writer):
            side.transport.abort()
            self._transports.discard(side.transport)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        while True:
            chunk = await source.read(65536)
            if not chunk:
                with contextlib.suppress(OSError):
                    sink.write_eof()
                return
            await self._flowing.wait()  # blackholed: held here, neither sent nor refused
            sink.write(chunk)
            await sink.drain()
