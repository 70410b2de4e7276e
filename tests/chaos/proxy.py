"""A TCP proxy on loopback between the workers and PostgreSQL that the chaos harness can stall
(bytes stop flowing, connections stay open) and cut (every connection dropped at once)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable


class Proxy:
    """Forwards 127.0.0.1:<port> to a PostgreSQL Unix socket, in a thread of its own."""

    def __init__(self, unix_socket: str) -> None:
        self.unix_socket = unix_socket
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> int:
        """Start listening; return the port."""
        self._thread.start()
        self._ready.wait(10)
        return self.port

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._listen())
        self._loop.run_forever()

    async def _listen(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.unix_socket)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    def _call(self, func: Callable[[], Awaitable[None]]) -> None:
        asyncio.run_coroutine_threadsafe(func(), self._loop).result(10)

    def stall(self) -> None:
        """Stop forwarding bytes; connections stay open, as on a frozen network path."""

        async def go() -> None:
            self._flowing.clear()

        self._call(go)

    def resume(self) -> None:
        """Forward again what was held back."""

        async def go() -> None:
            self._flowing.set()

        self._call(go)

    def cut(self) -> None:
        """Drop every proxied connection at once."""

        async def go() -> None:
            for writer in list(self._writers):
                with contextlib.suppress(OSError, RuntimeError):
                    writer.transport.abort()
            self._writers.clear()

        self._call(go)

    def close(self) -> None:
        """Stop the proxy."""

        async def go() -> None:
            self._flowing.set()
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                with contextlib.suppress(OSError, RuntimeError):
                    writer.transport.abort()

        self._call(go)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
