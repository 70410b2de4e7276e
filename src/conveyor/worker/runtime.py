"""The running attempt as its handler sees it: progress, logger and cancellation signal."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID

from conveyor.models import Job

job_log = logging.getLogger("conveyor.job")


class Runtime:
    """Implements :class:`conveyor.models.JobRuntime` for one attempt."""

    def __init__(
        self,
        job: Job,
        loop: asyncio.AbstractEventLoop,
        on_progress: Callable[[UUID, int, dict[str, Any]], None],
    ) -> None:
        self._job_id = job.id
        self._attempt = job.attempt
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._on_progress = on_progress
        self._cancelled = threading.Event()
        extra = {"job_id": str(job.id), "queue": job.queue, "attempt": job.attempt}
        self._logger = logging.LoggerAdapter(job_log, extra)

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger tagged with the job's id, queue and attempt."""
        return self._logger

    @property
    def cancelled(self) -> threading.Event:
        """Set when the handler should stop."""
        return self._cancelled

    def report_progress(self, percent: float, message: str | None) -> None:
        """Queue progress for the next batch; safe from the loop and from handler threads."""
        value = {"percent": percent, "message": message}
        if threading.get_ident() == self._loop_thread:
            self._on_progress(self._job_id, self._attempt, value)
        else:
            self._loop.call_soon_threadsafe(self._on_progress, self._job_id, self._attempt, value)
