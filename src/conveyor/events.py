"""Lifecycle events of jobs and workers, for logs, metrics and tracing.

Subscribe with ``@app.on("job.completed")``. Callbacks run in the worker's event loop and must be
quick; an exception in one is logged and never reaches the job or the worker.

One word, one meaning: ``failed`` is the job's state once its last attempt failed (it stands in
the dead letters), never a single failed attempt. A failing job that is retried once, then fails
again, emits ``job.attempt_failed``, ``job.retried``, ``job.attempt_failed``, ``job.failed`` and
``job.dead``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from conveyor.errors import InvalidOption
from conveyor.models import Job

log = logging.getLogger("conveyor.events")

EVENTS = (
    "job.started",  # a worker began an attempt
    "job.completed",  # the job finished; its result is stored
    "job.attempt_failed",  # one attempt failed (the job may still be retried)
    "job.retried",  # the job was queued again after a failed attempt
    "job.snoozed",  # the handler raised Retry: queued again, attempt not spent
    "job.failed",  # the last attempt failed: the job is in state failed, in the dead letters
    "job.dead",  # the same moment as job.failed, under the name the dead letters go by
    "job.cancelled",  # cancel() ended the job: by the worker that held it, else by the caller
    "worker.error",  # the worker hit an error of its own (database unreachable, ...)
)


@dataclass(frozen=True, slots=True)
class Event:
    """What happened, to which job, with the error or result when there is one.

    ``job`` is the job as its attempt saw it. Recovery, which takes back the jobs of dead
    workers without reading them whole, leaves ``job`` None and names the job by ``job_id`` and
    ``queue`` (its attempt number and error are not at hand either).

    ``job.cancelled`` comes from the worker that held the job (running it, or claimed and
    waiting: ``job`` None there, named by ``job_id`` and ``queue``) when ``cancel()`` reaches
    it; for a job no worker held, from the app whose ``cancel()`` moved it (``worker_id``
    None), unless that cancel ran in the caller's transaction (``connection=``), whose commit
    the app cannot see.
    """

    name: str
    worker_id: UUID | None
    job: Job | None = None
    error: dict[str, Any] | None = None
    result: Any = None
    job_id: UUID | None = None
    queue: str | None = None
    duration: float | None = None
    """Seconds the attempt ran, for the outcomes of an attempt (``job.completed``,
    ``job.retried``, ``job.failed``); None for other events."""


Listener = Callable[[Event], object]


class Events:
    """The subscribers of each event."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {name: [] for name in EVENTS}

    def on(self, name: str) -> Callable[[Listener], Listener]:
        """Decorator: call the function with an :class:`Event` each time ``name`` happens."""
        if name not in self._listeners:
            raise InvalidOption(f"unknown event {name!r}; events are {', '.join(EVENTS)}")

        def register(func: Listener) -> Listener:
            self._listeners[name].append(func)
            return func

        return register

    def wanted(self, name: str) -> bool:
        """True if anyone listens to ``name`` (so the event is worth building)."""
        return bool(self._listeners[name])

    def emit(self, event: Event) -> None:
        """Call every subscriber of the event; their errors are logged, never raised."""
        for listener in self._listeners[event.name]:
            try:
                listener(event)
            except Exception:
                log.exception("listener %r of %s failed", listener, event.name)
