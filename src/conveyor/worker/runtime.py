"""The running attempt as its handler sees it: progress, logger and cancellation signal."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from conveyor.errors import JobStateError
from conveyor.models import Cancellation

if TYPE_CHECKING:
    from conveyor.worker.transaction import Completion, JobTransaction, Transactions

job_log = logging.getLogger("conveyor.job")


class Runtime:
    """Implements :class:`conveyor.models.JobRuntime` for one attempt.

    Built for every attempt on the hot path, so the logger and the event are made on first use.
    """

    __slots__ = ("_attempt", "_cancelled", "_job_id", "_logger", "_loop", "_on_progress", "_queue",
                 "_stop_requested", "_transactions", "completion", "result")  # fmt: skip

    def __init__(
        self,
        job_id: UUID,
        queue: str,
        attempt: int,
        loop: asyncio.AbstractEventLoop,
        on_progress: Callable[[UUID, int, dict[str, Any]], None],
        transactions: Transactions | None = None,
    ) -> None:
        self._job_id = job_id
        self._queue = queue
        self._attempt = attempt
        self._loop = loop
        self._on_progress = on_progress
        self._cancelled: Cancellation | None = None
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self._stop_requested = False
        self._transactions = transactions
        # The completion written in the handler's own transaction, if it used one.
        self.completion: Completion | None = None
        self.result: Any = None  # set_result(): what that completion stores

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger tagged with the job's id, queue and attempt."""
        if self._logger is None:
            extra = {"job_id": str(self._job_id), "queue": self._queue, "attempt": self._attempt}
            self._logger = logging.LoggerAdapter(job_log, extra)
        return self._logger

    @property
    def cancelled(self) -> Cancellation:
        """Set when the handler should stop; true once set."""
        if self._cancelled is None:
            event = Cancellation()
            if self._stop_requested:
                event.set()
            self._cancelled = event
        return self._cancelled

    def request_stop(self) -> None:
        """Tell the handler to stop (cancelled, expired, or the worker is shutting down)."""
        self._stop_requested = True
        if self._cancelled is not None:
            self._cancelled.set()

    def report_progress(self, percent: float, message: str | None) -> None:
        """Queue progress for the next batch; safe from the loop and from handler threads."""
        value = {"percent": percent, "message": message}
        if self.on_worker_loop():
            self._on_progress(self._job_id, self._attempt, value)
        else:
            self._loop.call_soon_threadsafe(self._on_progress, self._job_id, self._attempt, value)

    @property
    def job_id(self) -> UUID:
        """The id of the attempt's job."""
        return self._job_id

    @property
    def attempt(self) -> int:
        """The attempt's number."""
        return self._attempt

    def on_worker_loop(self) -> bool:
        """True when called from the worker's event loop (an async handler)."""
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _source(self) -> Transactions:
        if self._transactions is None:
            raise JobStateError("this attempt runs without a database to complete it in")
        return self._transactions

    def transaction(self) -> JobTransaction:
        """See :meth:`conveyor.models.Job.transaction`."""
        return self._source().begin(self)

    def set_result(self, value: Any) -> None:
        """See :meth:`conveyor.models.Job.set_result`."""
        self.result = value

    def complete_in(self, connection: Any, result: Any) -> None:
        """See :meth:`conveyor.models.Job.complete_in`."""
        self._source().complete_in(self, connection, result)

    async def complete_in_async(self, connection: Any, result: Any) -> None:
        """See :meth:`conveyor.models.Job.complete_in_async`."""
        await self._source().complete_in_async(self, connection, result)
