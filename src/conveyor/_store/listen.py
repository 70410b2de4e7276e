"""The dedicated LISTEN connection of a worker: wake-ups and cancellations, with reconnects.

LISTEN cannot share a pooled connection (the pool would hand the subscription to someone else),
and behind PgBouncer in transaction mode it needs a direct connection; so it has its own. When the
connection drops, it reconnects with a growing, jittered delay, LISTENs again and reports the
reconnect, since notifications sent meanwhile are lost and the caller should look for work.

A few statements of the worker's own run on it too (:meth:`Listener.execute`): its idle marks are
session locks, which must live exactly as long as the subscription they stand for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger("conveyor.listen")


class Listener:
    """Listens on some channels and passes each notification to ``on_notify(channel, payload)``."""

    def __init__(
        self,
        dsn: str,
        channels: Sequence[str],
        on_notify: Callable[[str, str], None],
        on_connect: Callable[[], None],
        *,
        max_backoff: float = 10.0,
        probe_every: float = 1.0,
        application_name: str = "conveyor listen",
    ) -> None:
        self._dsn = dsn
        self._channels = list(channels)
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._max_backoff = max_backoff
        self._probe_every = probe_every
        self._application_name = application_name
        self.connected = asyncio.Event()
        # Counts the connections made: session state (the idle marks) of an earlier one is gone.
        self.generation = 0
        self._conn: psycopg.AsyncConnection[Any] | None = None
        # The connection's turns: hearing notifications, or a statement (execute), which asks
        # for the next turn and is counted until it has it.
        self._turn = asyncio.Lock()
        self._asked = asyncio.Event()
        self._asking = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Listen until ``stop`` is set, reconnecting whenever the connection is lost.

        Setting ``stop`` ends it at once, wherever it waits (connecting, LISTENing, waiting for
        a notification): a worker's exit never waits for a probe interval to run out.
        """
        failures = 0
        while not stop.is_set():
            try:
                await _unless_stopped(self._listen(), stop)
                failures = 0
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
                self.connected.clear()
                failures += 1
                delay = min(self._max_backoff, 0.1 * 2**failures) * (0.5 + random.random() / 2)
                log.warning("LISTEN connection lost (%s); reconnecting in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, application_name=self._application_name
        )
        try:
            for channel in self._channels:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.generation += 1
            self._conn = conn
            self.connected.set()
            self._on_connect()
            while True:
                if await self._hear(conn):
                    continue  # a statement wants the connection: it takes it in turn
                # After a quiet spell, make sure the connection is still alive.
                async with self._turn:
                    await conn.execute("SELECT 1")
        finally:
            self._conn = None
            self.connected.clear()
            await conn.close()

    async def _hear(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Pass on notifications until a quiet spell of ``probe_every`` (False) or until
        :meth:`execute` asks for the connection (True). A notification that arrives while a
        statement runs waits in psycopg's backlog for the next call."""
        async with self._turn:
            if self._asking:
                return True
            self._asked.clear()
            await _unless_stopped(self._pass_on(conn), self._asked)
            return self._asked.is_set()

    async def _pass_on(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async for note in conn.notifies(timeout=self._probe_every):
            self._on_notify(note.channel, note.payload)

    async def execute(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Run one statement on the LISTEN connection, in autocommit, and return its rows.

        Raises ``psycopg.OperationalError`` while there is no connection; a session lock it
        takes lasts until released or until ``generation`` changes."""
        conn = self._conn
        if conn is None:
            raise psycopg.OperationalError("the LISTEN connection is down")
        self._asking += 1
        self._asked.set()
        try:
            await self._turn.acquire()
        finally:
            self._asking -= 1
        try:
            if conn is not self._conn:
                raise psycopg.OperationalError("the LISTEN connection was lost")
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description else []
        finally:
            self._turn.release()


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    """Run ``work`` until it ends or ``stop`` is set; then it is cancelled, and its cleanup
    (closing the connection, leaving psycopg's notifies()) has run when this returns. Its own
    error is raised unless it was stopped."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if task.cancelled():
        return
    error = task.exception()
    if error is not None and not stop.is_set():
        raise error
