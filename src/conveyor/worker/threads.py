"""A bounded pool of daemon threads for sync handlers.

concurrent.futures' pool joins its threads when the interpreter exits, so one sync handler that
ignores its cancellation signal would keep a stopped worker process alive for as long as it runs.
These threads are daemons: once the worker has handed the job back and flushed its outcomes, the
process exits, and the stuck handler goes with it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

_STOP = object()


class DaemonThreadPool:
    """Runs callables on at most ``size`` daemon threads, started on demand."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, func: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run ``func(*args)`` on a pool thread; the future carries its result or exception."""
        future: Future[Any] = Future()
        self._tasks.put((future, func, args))
        with self._lock:
            if self._idle == 0 and len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
            else:
                self._idle -= 1
        return future

    def _serve(self) -> None:
        while True:
            item = self._tasks.get()
            if item is _STOP:
                return
            future, func, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(func(*args))
                except BaseException as exc:  # handed to the awaiting coroutine, whatever it is
                    future.set_exception(exc)
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Let idle threads end; busy ones end when their call returns. Never waits."""
        for _ in self._threads:
            self._tasks.put(_STOP)
