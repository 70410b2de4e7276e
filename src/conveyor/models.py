"""The records the public API returns: jobs, queues and queue statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID


class JobState(StrEnum):
    """The states of a job.

    ``created`` and ``retry`` are queued (waiting for ``run_at``), ``active`` is held by a worker;
    ``completed``, ``cancelled`` and ``failed`` are terminal; a failed job stands in the dead
    letters.
    """

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


class QueuePolicy(StrEnum):
    """How many jobs of a queue may be queued or running at once."""

    STANDARD = "standard"
    SHORT = "short"  # at most one queued
    SINGLETON = "singleton"  # at most one running
    STATELY = "stately"  # one queued and one running


@dataclass(frozen=True, slots=True)
class Job:
    """One job as stored: its payload, options, progress and outcome."""

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

    @property
    def max_attempts(self) -> int:
        """How many times the job may run in all: the first attempt plus ``retry_limit``."""
        return self.retry_limit + 1

    @property
    def error(self) -> dict[str, Any] | None:
        """The error of the latest failed attempt, or None."""
        return self.errors[-1] if self.errors else None


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


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts of a queue's jobs by state, and how long its oldest runnable job has waited."""

    queue: str
    counts: dict[JobState, int]
    oldest_waiting_seconds: float | None

    @property
    def queued(self) -> int:
        """Jobs waiting to run (``created`` plus ``retry``)."""
        return self.counts[JobState.CREATED] + self.counts[JobState.RETRY]
