"""Tracing with OpenTelemetry (the ``otel`` extra: ``pip install 'conveyor[otel]'``).

A send records a producer span (``send <queue>``) and stores its trace context in the jobs it
inserts (``job.meta``: ``traceparent``, ``tracestate``; from SQL, the ``meta`` option of
``send()``). Each attempt runs in a consumer span (``process <queue>``), a child of that context,
so a request, the jobs it sends and their runs are one trace. The attempt's span carries the
queue, the job id, the attempt number and the outcome (completed, retry, failed, snooze,
release, cancelled), and the error of a failed attempt as an ``exception`` event.

The spans go to the app's ``tracer_provider`` if it was given one, else to the global provider
(``opentelemetry.trace.set_tracer_provider``). Without opentelemetry-api, or until a provider
is set, nothing is recorded: a send or an attempt then costs one check (a module global, and the
provider's type), and no job gets a trace context.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Protocol

from conveyor.models import Job

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    _PROVIDER_FROM_ENVIRONMENT = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
except ImportError:  # the extra is not installed
    trace = None  # type: ignore[assignment]

SYSTEM = "conveyor"
_cached: tuple[Any, Any] | None = None  # (provider, its tracer)


class Sent(Protocol):
    """What a send's span needs to know of each job (a :class:`conveyor.options.JobSpec`)."""

    @property
    def id(self) -> Any: ...

    @property
    def queue(self) -> str: ...


def _tracer(provider: Any) -> Any:
    """The tracer of ``provider`` (None: the global one), or None when there is nothing to
    record into."""
    global _cached
    if trace is None:
        return None
    if provider is None:
        # The global read directly: get_tracer_provider() looks in os.environ on every call
        # until a provider is set (4 us measured), for a provider named there; so does this,
        # but only when that variable was set at start.
        provider = trace._TRACER_PROVIDER
        if provider is None:
            if not _PROVIDER_FROM_ENVIRONMENT:
                return None
            provider = trace.get_tracer_provider()
    if _cached is not None and _cached[0] is provider:
        return _cached[1]
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    _cached = (provider, provider.get_tracer("conveyor", version("conveyor")))
    return _cached[1]


def traced(provider: Any) -> bool:
    """Whether a send now records a span (and stores its trace context in its jobs)."""
    return _tracer(provider) is not None


def sending(jobs: Sequence[Sent], provider: Any) -> AbstractContextManager[str | None] | None:
    """Around a send: the producer span, giving the trace context to store in the jobs (JSON
    text for ``job.meta``); None when nothing is traced. ``provider``: the app's tracer
    provider, None for the global one."""
    tracer = _tracer(provider)
    return None if tracer is None else _sending(tracer, jobs)


@contextmanager
def _sending(tracer: Any, jobs: Sequence[Sent]) -> Iterator[str | None]:
    queues = sorted({job.queue for job in jobs})
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM,
        "messaging.operation.type": "send",
        "messaging.batch.message_count": len(jobs),
    }
    if len(queues) == 1:
        attributes["messaging.destination.name"] = queues[0]
    if len(jobs) == 1:
        attributes["messaging.message.id"] = str(jobs[0].id)
    name = f"send {queues[0]}" if len(queues) == 1 else "send"
    with tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield json.dumps(carrier) if carrier else None


@dataclass(slots=True)
class Attempt:
    """The consumer span of a running attempt, current in the attempt's task."""

    span: Any
    token: Any


def attempt_started(job: Job, provider: Any) -> Attempt | None:
    """Start the span of an attempt, a child of the send's trace context; None when nothing is
    traced."""
    tracer = _tracer(provider)
    if tracer is None:
        return None
    parent = propagate.extract(job.meta) if job.meta else None
    span = tracer.start_span(
        f"process {job.queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": str(job.id),
            "conveyor.job.attempt": job.attempt,
        },
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    return Attempt(span, token)


def attempt_ended(
    attempt: Attempt, outcome: str | None, error: str | None, *, completed_in_transaction: bool
) -> None:
    """End the span of an attempt with its outcome (None: the worker wrote none, as for a job
    completed in its handler's transaction or cancelled) and, for a failed attempt, its error
    (the stored form: JSON with type, message and traceback)."""
    span = attempt.span
    if outcome is None:
        outcome = "completed" if completed_in_transaction else "cancelled"
    span.set_attribute("conveyor.job.outcome", outcome)
    if error is not None:
        found = json.loads(error)
        span.add_event(
            "exception",
            {
                "exception.type": found.get("type") or "",
                "exception.message": found.get("message") or "",
                "exception.stacktrace": found.get("traceback") or "",
            },
        )
        span.set_status(Status(StatusCode.ERROR, found.get("message") or None))
    otel_context.detach(attempt.token)
    span.end()
