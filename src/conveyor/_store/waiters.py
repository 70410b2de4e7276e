"""``wait_for``'s wake-ups: one LISTEN connection per store on the channel that finishing jobs
notify, shared by every wait of that store (async tasks or threads), instead of a connection per
call.

A wait registers its job id, makes sure the connection listens, and only then reads the job, so
no NOTIFY sent after that read is missed. A notification is a list of finished job ids, or a
JSON array of outcomes: jobs kept in no history (retention 0) whose row is already gone, which
the wait keeps (``outcome``) instead of reading the job. When the connection breaks, every wait
is woken to read its job again (a notification may have been lost) and the next one reconnects.
Written twice, for asyncio and for threads, since a background reader does not translate from
one to the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, Connection, Error, sql

from conveyor._store.connections import unavailable

# How long the thread that reads notifications waits before it looks whether it should stop.
READ_TIMEOUT = 0.25


class AsyncWakeup:
    """The wake-up of one async wait."""

    def __init__(self, waiter: AsyncDoneWaiter) -> None:
        self._waiter = waiter
        self._event = asyncio.Event()
        self.outcome: dict[str, Any] | None = None

    async def arm(self) -> None:
        """Forget earlier wake-ups and make sure the connection listens: call before reading."""
        self._event.clear()
        await self._waiter.listening()

    def set(self, outcome: dict[str, Any] | None = None) -> None:
        if outcome is not None:
            self.outcome = outcome
        self._event.set()

    async def wait(self, timeout: float) -> None:
        """Until woken, or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)


class AsyncDoneWaiter:
    """The shared LISTEN connection of an async store."""

    def __init__(self, dsn: str, channel: str, kwargs: dict[str, Any]) -> None:
        self._dsn = dsn
        self._channel = channel
        self._kwargs = {**kwargs, "autocommit": True}
        self._waiting: dict[str, set[AsyncWakeup]] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    @contextlib.asynccontextmanager
    async def watch(self, job_id: UUID) -> AsyncIterator[AsyncWakeup]:
        """A wake-up set whenever ``job_id`` is reported finished (or the connection broke)."""
        wakeup = AsyncWakeup(self)
        self._waiting.setdefault(str(job_id), set()).add(wakeup)
        try:
            yield wakeup
        finally:
            found = self._waiting.get(str(job_id))
            if found is not None:
                found.discard(wakeup)
                if not found:
                    del self._waiting[str(job_id)]

    async def listening(self) -> None:
        """Connect and LISTEN unless that is done already."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop: what the old one held is gone with it
            self._loop, self._task, self._lock = loop, None, asyncio.Lock()
        assert self._lock is not None
        async with self._lock:
            if self._task is not None and not self._task.done():
                return
            try:
                conn = await AsyncConnection.connect(self._dsn, **self._kwargs)
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            except Error as exc:
                raise unavailable(exc) from None
            self._task = asyncio.create_task(self._read(conn))

    async def _read(self, conn: AsyncConnection[Any]) -> None:
        try:
            async for note in conn.notifies():
                for key, outcome in finished(note.payload):
                    for wakeup in self._waiting.get(key, ()):
                        wakeup.set(outcome)
        except Error:
            pass
        finally:
            for wakeups in self._waiting.values():
                for wakeup in wakeups:
                    wakeup.set()
            await conn.close()

    async def close(self) -> None:
        """Stop listening."""
        task, self._task = self._task, None
        if task is not None and not task.done() and self._loop is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class Wakeup:
    """The wake-up of one waiting thread."""

    def __init__(self, waiter: DoneWaiter) -> None:
        self._waiter = waiter
        self._event = threading.Event()
        self.outcome: dict[str, Any] | None = None

    def arm(self) -> None:
        """Forget earlier wake-ups and make sure the connection listens: call before reading."""
        self._event.clear()
        self._waiter.listening()

    def set(self, outcome: dict[str, Any] | None = None) -> None:
        if outcome is not None:
            self.outcome = outcome
        self._event.set()

    def wait(self, timeout: float) -> None:
        """Until woken, or ``timeout`` seconds."""
        self._event.wait(timeout)


class DoneWaiter:
    """The shared LISTEN connection of a sync store, read by a thread of its own."""

    def __init__(self, dsn: str, channel: str, kwargs: dict[str, Any]) -> None:
        self._dsn = dsn
        self._channel = channel
        self._kwargs = {**kwargs, "autocommit": True}
        self._waiting: dict[str, set[Wakeup]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @contextlib.contextmanager
    def watch(self, job_id: UUID) -> Iterator[Wakeup]:
        """A wake-up set whenever ``job_id`` is reported finished (or the connection broke)."""
        wakeup = Wakeup(self)
        with self._lock:
            self._waiting.setdefault(str(job_id), set()).add(wakeup)
        try:
            yield wakeup
        finally:
            with self._lock:
                found = self._waiting.get(str(job_id))
                if found is not None:
                    found.discard(wakeup)
                    if not found:
                        del self._waiting[str(job_id)]

    def listening(self) -> None:
        """Connect and LISTEN unless that is done already."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            try:
                conn = Connection.connect(self._dsn, **self._kwargs)
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            except Error as exc:
                raise unavailable(exc) from None
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._read, args=(conn,), name="conveyor-wait-for", daemon=True
            )
            self._thread.start()

    def _read(self, conn: Connection[Any]) -> None:
        try:
            while not self._stop.is_set():
                for note in conn.notifies(timeout=READ_TIMEOUT):
                    with self._lock:
                        woken = [
                            (w, outcome)
                            for k, outcome in finished(note.payload)
                            for w in self._waiting.get(k, ())
                        ]
                    for wakeup, outcome in woken:
                        wakeup.set(outcome)
        except Error:
            pass
        finally:
            with self._lock:
                everyone = [w for wakeups in self._waiting.values() for w in wakeups]
            for wakeup in everyone:
                wakeup.set()
            conn.close()

    def close(self) -> None:
        """Stop listening (the reading thread ends within a second)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(READ_TIMEOUT * 2)


def finished(payload: str) -> list[tuple[str, dict[str, Any] | None]]:
    """The jobs a "done" notification reports: (id, outcome), the outcome given only for a job
    whose row is gone (retention 0)."""
    if payload.startswith("["):
        return [(str(o["id"]), o) for o in json.loads(payload)]
    return [(key, None) for key in payload.split(",")]


def done_waiter_async(dsn: str, channel: str, kwargs: dict[str, Any]) -> AsyncDoneWaiter:
    """The shared wait_for connection of an async store."""
    return AsyncDoneWaiter(dsn, channel, kwargs)


def done_waiter(dsn: str, channel: str, kwargs: dict[str, Any]) -> DoneWaiter:
    """The shared wait_for connection of a sync store."""
    return DoneWaiter(dsn, channel, kwargs)
