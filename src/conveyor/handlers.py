"""The registry of job handlers: which function runs the jobs of which queue, with what defaults."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conveyor.backoff import RetryPolicy
from conveyor.errors import InvalidOption
from conveyor.models import Job
from conveyor.options import JOB_OPTIONS, check_queue_name, job_spec

HandlerFunc = Callable[[Job], Any]


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler: the function, whether it is ``async def``, and its job defaults."""

    queue: str
    func: HandlerFunc
    is_async: bool
    defaults: dict[str, Any] = field(default_factory=dict)
    retry_policy: RetryPolicy | None = None


class Registry:
    """Handlers by queue name."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(
        self,
        queue: str,
        func: HandlerFunc,
        *,
        retry_policy: RetryPolicy | None = None,
        **defaults: Any,
    ) -> Handler:
        """Register ``func`` for ``queue``; ``defaults`` are job options for jobs of this queue."""
        check_queue_name(queue)
        if not callable(func):
            raise InvalidOption(f"the handler of {queue!r} must be callable")
        if queue in self._handlers and self._handlers[queue].func is not func:
            raise InvalidOption(f"queue {queue!r} already has a handler")
        unknown = set(defaults) - set(JOB_OPTIONS)
        if unknown:
            raise InvalidOption(
                f"unknown job option(s) for {queue!r}: {', '.join(sorted(unknown))}"
            )
        job_spec(queue, None, defaults, 16)  # validates the values now, not at the first send
        handler = Handler(
            queue=queue,
            func=func,
            is_async=inspect.iscoroutinefunction(func),
            defaults=dict(defaults),
            retry_policy=retry_policy,
        )
        self._handlers[queue] = handler
        return handler

    def get(self, queue: str) -> Handler | None:
        """The handler of ``queue``, if any."""
        return self._handlers.get(queue)

    def queues(self) -> list[str]:
        """Every queue with a handler, in registration order."""
        return list(self._handlers)

    def defaults_for(self, queue: str) -> dict[str, Any]:
        """The job options registered with the handler of ``queue`` (empty if none)."""
        handler = self._handlers.get(queue)
        return handler.defaults if handler else {}
