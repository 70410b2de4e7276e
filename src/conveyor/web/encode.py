"""Conveyor's records as JSON values: the one shape the API returns and the pages display."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from enum import Enum
from typing import Any
from uuid import UUID

from conveyor.models import Job, Queue, QueueStats, Schedule


def plain(value: Any) -> Any:
    """``value`` with dataclasses, enums, datetimes and UUIDs turned into JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(plain(k)): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return value


def job_json(job: Job) -> dict[str, Any]:
    """A job, with its derived ``max_attempts``."""
    return {**plain(job), "max_attempts": job.max_attempts}


def stats_json(stats: QueueStats) -> dict[str, Any]:
    """A queue's counts by state, with the derived ``queued``."""
    return {**plain(stats), "queued": stats.queued}


def queue_json(queue: Queue, stats: QueueStats | None) -> dict[str, Any]:
    """A queue's policy and, under ``stats``, its counts."""
    return {**plain(queue), "stats": stats_json(stats) if stats is not None else None}


def schedule_json(schedule: Schedule, next_run: datetime | None) -> dict[str, Any]:
    """A schedule and when it fires next (None when disabled)."""
    return {**plain(schedule), "next_run": plain(next_run)}
