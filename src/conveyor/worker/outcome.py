"""Decide what an attempt's end means for its job: complete, retry, snooze, fail or hand back.

Pure apart from the clock and randomness, which are passed in; the worker turns the result into an
acknowledgement.
"""

from __future__ import annotations

import json
import math
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any
from uuid import UUID

from conveyor._store.worker_store import Ack
from conveyor.backoff import retry_delay
from conveyor.errors import Fail, InvalidRetryDelay, Retry
from conveyor.handlers import Handler
from conveyor.models import Job
from conveyor.options import TEN_YEARS, encode_payload

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


def describe(
    exc: BaseException,
    job: Job,
    worker: UUID,
    kind: str | None = None,
    started_at: datetime | None = None,
) -> dict[str, Any]:
    """The stored form of an attempt's error. Never raises, whatever the exception does.

    ``claimed_at`` (the job's ``started_at``: when the worker claimed it) and ``started_at``
    (when its handler was called) let the dashboard draw each attempt's timeline: a claim may
    wait in the worker's prefetch buffer before it starts."""
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
        "claimed_at": job.started_at.isoformat() if job.started_at else None,
        "started_at": started_at.isoformat() if started_at else None,
        "at": datetime.now(UTC).isoformat(),
    }


def completed(job: Job, result: object, limit: int) -> Ack:
    """The ack of a handler's return value; :class:`PayloadError` if jsonb cannot store it
    (the same rules as a job's payload)."""
    text = "null" if result is None else encode_payload(result, limit)
    return Ack(job.id, job.attempt, "completed", result=text)


def snoozed(job: Job, request: Retry, now: datetime | None) -> Ack:
    """The ack of ``raise Retry(after=...)``: back in the queue, the attempt not spent.

    :class:`InvalidRetryDelay` if ``after`` is not a delay the database can store (NaN,
    infinite, over ten years, not a number): the handler asked for something impossible.
    """
    after = request.after
    if after is None:
        delay = 0.0
    elif isinstance(after, datetime):
        base = now or datetime.now(UTC)
        when = after if after.tzinfo else after.replace(tzinfo=UTC)
        delay = (when - base).total_seconds()
    elif isinstance(after, timedelta):
        delay = after.total_seconds()
    else:
        try:
            delay = float(after)
        except (TypeError, ValueError, OverflowError):
            delay = math.nan
    if not math.isfinite(delay) or delay > TEN_YEARS:
        raise InvalidRetryDelay(
            f"Retry(after={after!r}): the delay must be a finite number of seconds up to "
            f"{TEN_YEARS:g} (ten years), a timedelta or a datetime within that"
        )
    return Ack(job.id, job.attempt, "snooze", delay=max(delay, 0.0))


def failed(
    job: Job,
    handler: Handler | None,
    exc: BaseException,
    error: dict[str, Any],
    rng: Callable[[], float],
    *,
    final: bool = False,
) -> Ack:
    """The ack of a failed attempt: retried with backoff while attempts remain, else failed.

    ``final`` fails the job at once (as :class:`Fail` does): running it again cannot help. A
    ``retry_policy`` that returns something other than a delay the database can store is
    reported in the error (``retry_policy_error``) and the job retries after the policy's cap
    (the job's ``retry_delay_max``, else ten years at most).
    """
    if final or isinstance(exc, Fail) or job.attempt >= job.max_attempts:
        return Ack(job.id, job.attempt, "failed", error=json.dumps(error))
    if handler is not None and handler.retry_policy is not None:
        try:
            custom = handler.retry_policy(job.attempt, exc)
        except Exception:
            custom = None
        if custom is None:
            return Ack(job.id, job.attempt, "failed", error=json.dumps(error))
        delay = _policy_delay(custom, job, error)
        return Ack(job.id, job.attempt, "retry", error=json.dumps(error), delay=delay)
    delay = retry_delay(
        job.attempt,
        kind=job.retry_backoff,
        delay=job.retry_delay,
        delay_max=job.retry_delay_max,
        rng=rng,
    )
    return Ack(job.id, job.attempt, "retry", error=json.dumps(error), delay=delay)


def _policy_delay(value: object, job: Job, error: dict[str, Any]) -> float:
    """A custom policy's answer as seconds the database can store; a bad one is noted in the
    attempt's error and replaced by the cap."""
    cap = min(job.retry_delay_max or TEN_YEARS, TEN_YEARS)
    try:
        delay = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        delay = math.nan
    if math.isfinite(delay) and 0 <= delay <= TEN_YEARS:
        return delay
    error["retry_policy_error"] = (
        f"retry_policy returned {value!r}, not a number of seconds from 0 to {TEN_YEARS:g}; "
        f"retrying after {cap:g} s"
    )
    return cap
