"""Decide what an attempt's end means for its job: complete, retry, snooze, fail or hand back.

Pure apart from the clock and randomness, which are passed in; the worker turns the result into an
acknowledgement.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any
from uuid import UUID

from conveyor._store.worker_store import Ack
from conveyor.backoff import retry_delay
from conveyor.errors import Fail, Retry
from conveyor.handlers import Handler
from conveyor.models import Job
from conveyor.options import encode_payload

# Error texts are kept whole up to this size; a traceback of a deep recursion is cut.
MAX_TEXT = 64 * 1024


def _clean(text: str) -> str:
    """Text that jsonb can store: no NUL, no lone surrogates, bounded length."""
    text = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\\x00")
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 20] + "\n... (truncated)"


def _from_handler(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from its first frame outside the worker, so that a stored traceback starts
    in the handler; all of it when no frame is the handler's (an error of the worker)."""
    first = tb
    while first is not None and first.tb_frame.f_globals.get("__name__", "").startswith(
        "conveyor.worker."
    ):
        first = first.tb_next
    return first or tb


def describe(exc: BaseException, job: Job, worker: UUID, kind: str | None = None) -> dict[str, Any]:
    """The stored form of an attempt's error. Never raises, whatever the exception does."""
    try:
        name = kind or type(exc).__name__
    except Exception:
        name = "Exception"
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {name}>"
    try:
        trace: str | None = "".join(
            traceback.format_exception(type(exc), exc, _from_handler(exc.__traceback__))
        )
    except Exception:
        trace = None
    return {
        "attempt": job.attempt,
        "type": _clean(name),
        "message": _clean(message),
        "traceback": _clean(trace) if trace is not None else None,
        "worker": str(worker),
        "at": datetime.now(UTC).isoformat(),
    }


def completed(job: Job, result: object, limit: int) -> Ack:
    """The ack of a handler's return value; :class:`PayloadError` if jsonb cannot store it
    (the same rules as a job's payload)."""
    text = "null" if result is None else encode_payload(result, limit)
    return Ack(job.id, job.attempt, "completed", result=text)


def snoozed(job: Job, request: Retry, now: datetime | None) -> Ack:
    """The ack of ``raise Retry(after=...)``: back in the queue, the attempt not spent."""
    after = request.after
    if after is None:
        delay = 0.0
    elif isinstance(after, datetime):
        base = now or datetime.now(UTC)
        when = after if after.tzinfo else after.replace(tzinfo=UTC)
        delay = max((when - base).total_seconds(), 0.0)
    elif isinstance(after, timedelta):
        delay = max(after.total_seconds(), 0.0)
    else:
        delay = max(float(after), 0.0)
    return Ack(job.id, job.attempt, "snooze", delay=delay)


def failed(
    job: Job,
    handler: Handler | None,
    exc: BaseException,
    error: dict[str, Any],
    rng: Callable[[], float],
) -> Ack:
    """The ack of a failed attempt: retried with backoff while attempts remain, else failed."""
    text = json.dumps(error)
    if isinstance(exc, Fail) or job.attempt >= job.max_attempts:
        return Ack(job.id, job.attempt, "failed", error=text)
    if handler is not None and handler.retry_policy is not None:
        try:
            custom = handler.retry_policy(job.attempt, exc)
        except Exception:
            custom = None
        if custom is None:
            return Ack(job.id, job.attempt, "failed", error=text)
        return Ack(job.id, job.attempt, "retry", error=text, delay=max(float(custom), 0.0))
    delay = retry_delay(
        job.attempt,
        kind=job.retry_backoff,
        delay=job.retry_delay,
        delay_max=job.retry_delay_max,
        rng=rng,
    )
    return Ack(job.id, job.attempt, "retry", error=text, delay=delay)
