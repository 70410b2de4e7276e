"""The records the public API returns: jobs, queues and queue statistics."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol
from uuid import UUID

from conveyor.errors import InvalidOption, JobStateError


class JobState(StrEnum):
    """The states of a job.

    ``created`` and ``retry`` are queued (waiting for ``run_at``), ``waiting`` waits for the jobs
    it depends on (``depends_on``), ``active`` is held by a worker; ``completed``, ``cancelled``
    and ``failed`` are terminal; a failed job stands in the dead letters.
    """

    WAITING = "waiting"
    CREATED = "created"
    RETRY = "retry"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        """True for ``completed``, ``cancelled`` and ``failed``."""
        return self in TERMINAL_STATES

    @property
    def is_queued(self) -> bool:
        """True for ``created`` and ``retry``."""
        return self in (JobState.CREATED, JobState.RETRY)


TERMINAL_STATES = frozenset({JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED})


class Cancellation(threading.Event):
    """A job's cancellation signal: a :class:`threading.Event` that is true once set.

    ``if job.cancelled:`` and ``while not job.cancelled:`` read whether it is set, as they read;
    a plain Event is always true, so that spelling would stop every handler at once.
    ``wait(timeout)`` and ``is_set()`` work as on any Event.
    """

    def __bool__(self) -> bool:
        return self.is_set()


# The cancellation signal of a Job that is not running: nothing will ever set it.
_NEVER_SET = Cancellation()


class QueuePolicy(StrEnum):
    """How many jobs of a queue may be queued or running at once."""

    STANDARD = "standard"
    SHORT = "short"  # at most one queued
    SINGLETON = "singleton"  # at most one running
    STATELY = "stately"  # one queued and one running


class JobRuntime(Protocol):
    """What a running attempt offers its handler; provided by the worker."""

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that tags each record with the job's id, queue and attempt."""
        ...

    @property
    def cancelled(self) -> Cancellation:
        """Set when the job was cancelled or ran past ``expire_in``, or the worker is stopping."""
        ...

    def report_progress(self, percent: float, message: str | None) -> None:
        """Record progress; the worker writes it to the database in its next batch."""
        ...

    def transaction(self) -> HandlerTransaction:
        """A transaction that completes the attempt when it commits."""
        ...

    def set_result(self, value: Any) -> None:
        """The result the completion written by ``transaction()`` stores."""
        ...

    def complete_in(self, connection: Any, result: Any) -> None:
        """Write the completion in a sync connection's transaction."""
        ...

    async def complete_in_async(self, connection: Any, result: Any) -> None:
        """Write the completion in an async connection's transaction."""
        ...


class HandlerTransaction(Protocol):
    """What ``job.transaction()`` returns: ``async with`` it in an ``async def`` handler,
    ``with`` it in a ``def`` handler; either gives a psycopg connection in a transaction."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> bool | None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool | None: ...


@dataclass(frozen=True, slots=True)
class Job:
    """One job as stored: its payload, options, progress and outcome.

    A handler receives a Job bound to its running attempt: ``report_progress``, ``logger`` and
    ``cancelled`` work there; on a Job read with ``get_job`` they refuse or do nothing.
    """

    id: UUID
    queue: str
    state: JobState
    data: Any
    priority: int
    attempt: int
    retry_limit: int
    retry_delay: float
    retry_backoff: str
    retry_delay_max: float | None
    expire_in: float
    retention: float
    run_at: datetime
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    progress: dict[str, Any] | None = None
    singleton_key: str | None = None
    singleton_seconds: int | None = None
    unique_key: str | None = None
    dead_letter: str | None = None
    group_key: str | None = None
    depends_on: list[UUID] = field(default_factory=list)
    worker_id: UUID | None = None
    _runtime: JobRuntime | None = field(default=None, compare=False, repr=False)
    # After _runtime, which the worker fills positionally.
    results: dict[UUID, Any] = field(default_factory=dict)
    """The results of the jobs in ``depends_on`` that completed (a flow's children), by id, in
    ``depends_on`` order; filled for a running job and by ``get_job``."""
    meta: dict[str, Any] | None = None
    """What Conveyor keeps about the job beside its payload, live and in the history: the
    trace context of its send (``traceparent``, ``tracestate``) and the schedule tick it
    stands for (``scheduled_for``); ``None`` when there is nothing."""
    fair_key: str | None = None
    """The key a fair queue takes turns by (``send(..., fair_key=...)``); a job sent to a fair
    queue without one has the key ``""``."""

    @property
    def scheduled_for(self) -> datetime | None:
        """The tick of the schedule that sent this job (a backfilled job's is in the past), or
        None for a job no schedule sent."""
        tick = (self.meta or {}).get("scheduled_for")
        return datetime.fromisoformat(tick) if isinstance(tick, str) else None

    @property
    def max_attempts(self) -> int:
        """How many times the job may run in all: the first attempt plus ``retry_limit``."""
        return self.retry_limit + 1

    @property
    def error(self) -> dict[str, Any] | None:
        """The error of the latest failed attempt, or None."""
        return self.errors[-1] if self.errors else None

    def report_progress(self, percent: float, message: str | None = None) -> None:
        """Record how far the handler got (0-100) with an optional message; callable from sync
        and async handlers alike. It is stored in batches and shown by ``get_job().progress``.
        """
        if self._runtime is None:
            raise JobStateError("report_progress works only inside a running handler")
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise InvalidOption("percent must be a number from 0 to 100")
        if not 0 <= percent <= 100:
            raise InvalidOption("percent must be a number from 0 to 100")
        if message is not None and not isinstance(message, str):
            raise InvalidOption("message must be a string")
        self._runtime.report_progress(float(percent), message)

    def transaction(self) -> HandlerTransaction:
        """Do the handler's database work in the transaction that completes the job.

        ``async with job.transaction() as conn:`` in an ``async def`` handler (``with`` in a
        ``def`` handler) gives a psycopg connection (async or sync) in a new transaction. Write
        on it, send follow-up jobs with ``connection=conn``; when the block ends, the job's
        completion is written in the same transaction and it commits: all of it or none of it.
        The completion is guarded like every acknowledgement: if this attempt no longer holds
        the job (cancelled, recovered, expired), :class:`~conveyor.errors.AttemptLost` is
        raised and everything is rolled back. If the block raises, it rolls back and the
        attempt fails as usual. After a commit, the job is completed whatever the handler
        does next; the stored result is the value given to :meth:`set_result` inside the
        block (``None`` if none), since the handler's return value is not known at the commit.
        """
        return self._running().transaction()

    def set_result(self, value: Any) -> None:
        """The result to store when :meth:`transaction` completes the job; call it inside the
        block. Checked when the completion is written (a value JSON cannot store raises
        :class:`~conveyor.errors.PayloadError` there, and the transaction rolls back)."""
        self._running().set_result(value)

    def complete_in(self, connection: Any, result: Any = None) -> None:
        """Complete the job in the open transaction of the caller's psycopg ``connection``:
        the job is completed, with ``result``, if and only if that transaction commits.

        Commit it before the handler returns: the worker then asks PostgreSQL whether that
        transaction committed, and if it did not, the attempt fails as usual. Raises
        :class:`~conveyor.errors.AttemptLost` (nothing written; roll the transaction back)
        if this attempt no longer holds the job. For SQLAlchemy and Django, see
        :mod:`conveyor.integrations.sqlalchemy` and :mod:`conveyor.integrations.django`.
        """
        self._running().complete_in(connection, result)

    async def complete_in_async(self, connection: Any, result: Any = None) -> None:
        """:meth:`complete_in` on a psycopg ``AsyncConnection``."""
        await self._running().complete_in_async(connection, result)

    def _running(self) -> JobRuntime:
        if self._runtime is None:
            raise JobStateError("a job completes in a transaction only inside its running handler")
        return self._runtime

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger tagged with this job's id, queue and attempt."""
        if self._runtime is not None:
            return self._runtime.logger
        extra = {"job_id": str(self.id), "queue": self.queue, "attempt": self.attempt}
        return logging.LoggerAdapter(logging.getLogger("conveyor.job"), extra)

    @property
    def cancelled(self) -> Cancellation:
        """Set when the handler should stop: the job was cancelled, ran past ``expire_in``, or
        the worker is shutting down. True once set, so ``if job.cancelled:`` works; sync handlers
        poll it (or ``job.cancelled.wait(timeout)``); async handlers are also cancelled.
        """
        if self._runtime is not None:
            return self._runtime.cancelled
        return _NEVER_SET

    def is_cancelled(self) -> bool:
        """Shorthand for ``job.cancelled.is_set()``."""
        return self.cancelled.is_set()


@dataclass(frozen=True, slots=True)
class Queue:
    """A queue and its policy; ``None`` fields fall back to the application's defaults."""

    name: str
    policy: QueuePolicy
    priority: int | None
    retry_limit: int | None
    retry_delay: float | None
    retry_backoff: str | None
    retry_delay_max: float | None
    expire_in: float | None
    retention: float | None
    dead_letter: str | None
    concurrency: int | None
    rate_limit: int | None
    rate_interval: float | None
    created_at: datetime
    updated_at: datetime
    paused: bool = False
    """No worker starts its jobs until it is resumed (:meth:`~conveyor.Conveyor.pause_queue`)."""
    fair: bool = False
    """Its jobs are claimed by turns across their ``fair_key`` values, not in one global order
    (``create_queue(name, fair=True)``)."""


@dataclass(frozen=True, slots=True)
class BulkResult:
    """What a bulk action did: ``matched`` jobs fitted the filter (and the action) when it
    started; ``affected`` of them it changed (0 in a dry run). Fewer are affected than matched
    when jobs moved on meanwhile (finished, claimed, or locked by another transaction)."""

    action: str
    dry_run: bool
    matched: int
    affected: int


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts of a queue's jobs by state, how long its oldest runnable job has waited, and
    whether the queue is paused."""

    queue: str
    counts: dict[JobState, int]
    oldest_waiting_seconds: float | None
    paused: bool = False

    @property
    def queued(self) -> int:
        """Jobs waiting to run (``created`` plus ``retry``)."""
        return self.counts[JobState.CREATED] + self.counts[JobState.RETRY]


@dataclass(frozen=True, slots=True)
class StatsMinute:
    """What happened in one queue (or in all) during one minute.

    ``completed``, ``failed`` and ``cancelled`` count the jobs that reached that state in the
    minute; ``retried`` the attempts of those jobs that ended in a retry. ``wait_p50_ms`` and
    ``wait_p95_ms`` estimate how long those jobs waited between their ``run_at`` and the start
    of their last attempt: the jobs are counted in wait buckets (1, 1.5, 2, 3, 5, 7, 10 ms and
    so on) and the percentile is interpolated within its bucket (None when none started).
    ``backlog`` is the number of runnable jobs waiting when the minute was sampled (None if it
    was not; the current minute has the backlog of now until it is sampled).
    """

    minute: datetime
    completed: int
    failed: int
    cancelled: int
    retried: int
    wait_p50_ms: float | None
    wait_p95_ms: float | None
    backlog: int | None


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring job: every tick of ``cron`` (in ``tz``) or every ``every`` seconds sends one
    job to ``queue`` with ``data`` and job ``options``."""

    name: str
    cron: str | None
    every: float | None
    tz: str
    queue: str
    data: Any
    options: dict[str, Any]
    missed: str
    backfill_limit: int
    enabled: bool
    last_tick: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A registered worker process, as its heartbeat row stands."""

    id: UUID
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime
    metadata: dict[str, Any]

    @property
    def heartbeat_age(self) -> float:
        """Seconds since the worker's last heartbeat, by this host's clock."""
        return (datetime.now(UTC) - self.heartbeat_at).total_seconds()


@dataclass(frozen=True, slots=True)
class QueueHealth:
    """How far behind a queue is: its queued jobs (``created`` and ``retry``, due or not), and
    how long the oldest runnable one has waited past its ``run_at``; a paused queue's backlog
    waits on purpose and is never reported as stuck."""

    queue: str
    depth: int
    oldest_waiting_seconds: float | None
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Health:
    """The state of an application's database, schema, workers and queues, for probes.

    ``ok`` is true when ``problems`` is empty. An unreachable database is reported here
    (``database`` false), never raised.
    """

    ok: bool
    database: bool
    schema_current: bool
    pending_migrations: tuple[str, ...]
    unknown_migrations: tuple[int, ...]
    workers: int
    queues: tuple[QueueHealth, ...]
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing ``conveyor doctor`` found: its severity (``ok``, ``warning``, ``error``), the
    check that found it, one line saying what, and one line saying how to fix it."""

    severity: str
    check: str
    message: str
    fix: str = ""
