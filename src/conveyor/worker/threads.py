"""A bounded pool of daemon threads for sync handlers, which replaces threads stuck in handlers
that ignore their cancellation.

concurrent.futures' pool joins its threads when the interpreter exits, so one sync handler that
ignores its cancellation signal would keep a stopped worker process alive for as long as it runs.
These threads are daemons: once the worker has handed the job back and flushed its outcomes, the
process exits, and the stuck handler goes with it.

Python cannot stop a thread. When the worker gives up on a call that runs past its deadline or
was cancelled, it :meth:`abandons <DaemonThreadPool.abandon>` it: that thread no longer counts
against the pool's size, so the next job gets a fresh thread and the worker keeps its promised
concurrency. At most ``max_stuck`` threads are replaced; past that, :attr:`over_stuck_limit`
tells the worker to hold a slot for each further stuck thread instead of starting more threads.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_STOP = object()


class DaemonThreadPool:
    """Runs callables on at most ``size`` busy daemon threads (plus abandoned ones)."""

    def __init__(self, size: int, name: str, *, max_stuck: int | None = None) -> None:
        self._size = size
        self._name = name
        self._max_stuck = size if max_stuck is None else max_stuck
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = 0
        self._started = 0
        self._idle = 0
        self._abandoned: set[Future[Any]] = set()
        self._lock = threading.Lock()

    @property
    def stuck(self) -> int:
        """Threads still busy with a call the worker gave up on."""
        return len(self._abandoned)

    @property
    def over_stuck_limit(self) -> int:
        """How many stuck threads exceed ``max_stuck`` (slots the worker must hold)."""
        return max(0, len(self._abandoned) - self._max_stuck)

    def submit(self, func: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``func(*args)`` on a pool thread; the future carries its result or exception."""
        future: Future[Any] = Future()
        self._tasks.put((future, func, args))
        with self._lock:
            replaceable = min(len(self._abandoned), self._max_stuck)
            if self._idle == 0 and self._threads < self._size + replaceable:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}-{self._started}", daemon=True
                )
                self._threads += 1
                self._started += 1
                thread.start()
            else:
                self._idle -= 1
        return future

    def abandon(self, future: Future[Any]) -> None:
        """The worker no longer waits for ``future``'s call: if it is still running, its thread
        stops counting against the pool's size until the call returns."""
        with self._lock:
            if future.running():
                self._abandoned.add(future)

    def _serve(self) -> None:
        while True:
            item = self._tasks.get()
            if item is _STOP:
                with self._lock:
                    self._threads -= 1
                return
            future, func, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(func(*args))
                except BaseException as exc:  # handed to the awaiting coroutine, whatever it is
                    future.set_exception(exc)
            with self._lock:
                self._abandoned.discard(future)
                if self._threads > self._size + min(len(self._abandoned), self._max_stuck):
                    # A replacement outlived the stuck call it stood in for: one too many.
                    self._threads -= 1
                    return
                self._idle += 1

    def shutdown(self) -> None:
        """Let idle threads end; busy ones end when their call returns. Never waits."""
        for _ in range(self._threads):
            self._tasks.put(_STOP)


class LoopHandoff:
    """Hands finished calls back to one event loop with one wake-up per burst: each call that
    ends is queued, and only the first of a burst calls ``call_soon_threadsafe`` (a write to the
    loop's wake-up pipe), where a wake-up per call cost sync handlers a system call each."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ended: collections.deque[tuple[asyncio.Future[Any], Future[Any]]] = (
            collections.deque()
        )
        self._armed = False
        self._lock = threading.Lock()

    def watch(self, call: Future[Any]) -> asyncio.Future[Any]:
        """A future of the loop that takes ``call``'s outcome when it ends. Cancelling it
        leaves the call alone."""
        waiter: asyncio.Future[Any] = self._loop.create_future()
        call.add_done_callback(lambda ended: self._ended_call(waiter, ended))
        return waiter

    def _ended_call(self, waiter: asyncio.Future[Any], call: Future[Any]) -> None:
        with self._lock:
            self._ended.append((waiter, call))
            if self._armed:
                return
            self._armed = True
        self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            self._armed = False
        while self._ended:
            waiter, call = self._ended.popleft()
            if waiter.done():
                continue
            if call.cancelled():
                waiter.cancel()
            elif (error := call.exception()) is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(call.result())
