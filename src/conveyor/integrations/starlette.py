"""Starlette and FastAPI: run a Conveyor worker inside the web app's event loop.

As the app's lifespan::

    api = FastAPI(lifespan=worker_lifespan(conveyor, concurrency=5))

or inside a lifespan of your own::

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with worker_lifespan(conveyor):
            yield

The worker starts with the app and stops gracefully with it: fetching ends, and in-flight jobs
get ``shutdown_timeout`` seconds to finish. Mount the dashboard beside your routes with
``api.mount("/conveyor", conveyor.web.create_app(conveyor, token=...))`` (the ``web`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

from conveyor.app import Conveyor

__all__ = ["WorkerLifespan", "worker_lifespan"]

log = logging.getLogger("conveyor.worker")


class WorkerLifespan:
    """Runs :meth:`Conveyor.run_worker_async` in a task for as long as it is entered.

    Call it with the web app (``lifespan=``) or enter it with ``async with``.
    """

    def __init__(
        self,
        conveyor: Conveyor,
        queues: Sequence[str] | None,
        concurrency: int,
        worker_options: dict[str, Any],
    ) -> None:
        self._conveyor = conveyor
        self._queues = queues
        self._concurrency = concurrency
        self._options = worker_options
        self._entered: list[AbstractAsyncContextManager[None]] = []

    def __call__(self, app: object) -> AbstractAsyncContextManager[None]:
        """The lifespan of ``app``: Starlette and FastAPI call it with themselves."""
        return self._running()

    async def __aenter__(self) -> None:
        running = self._running()
        await running.__aenter__()
        self._entered.append(running)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._entered.pop().__aexit__(kind, exc, tb)

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        stop = asyncio.Event()
        worker = asyncio.create_task(
            self._conveyor.run_worker_async(
                self._queues, self._concurrency, stop=stop, **self._options
            ),
            name=f"conveyor worker {self._conveyor.schema}",
        )
        # A worker that dies while the app serves is reported now, not only at shutdown.
        worker.add_done_callback(_report)
        try:
            yield
        finally:
            stop.set()
            await worker


def worker_lifespan(
    conveyor: Conveyor,
    queues: Sequence[str] | None = None,
    concurrency: int = 10,
    **worker_options: Any,
) -> WorkerLifespan:
    """A lifespan that runs a worker of ``conveyor`` while the web app runs.

    ``queues``, ``concurrency`` and ``worker_options`` (``shutdown_timeout``, ``poll_interval``,
    ``migrate``, ...) are those of :meth:`Conveyor.run_worker_async`; its ``stop`` is set on
    shutdown. A worker that fails is logged at once and its error raised on shutdown.
    """
    return WorkerLifespan(conveyor, queues, concurrency, worker_options)


def _report(task: asyncio.Task[int]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the worker of the web app stopped", exc_info=task.exception())
