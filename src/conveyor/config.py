"""Configuration of a :class:`~conveyor.Conveyor` application."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from conveyor.clock import Clock, database_clock
from conveyor.errors import ConfigurationError

DSN_VARIABLES = ("CONVEYOR_DATABASE_URL", "DATABASE_URL")
READ_DSN_VARIABLE = "CONVEYOR_READ_DATABASE_URL"
DEFAULT_SCHEMA = "conveyor"
DEFAULT_PAYLOAD_LIMIT = 1024 * 1024
DEFAULT_DEAD_RETENTION = 14 * 24 * 3600.0
# Seconds a finished job is kept when neither the job, its queue nor the app sets a retention
# (the same default as resolve_jobs in SQL).
DEFAULT_RETENTION = 7 * 24 * 3600.0
# Tick rows older than this (and older than their schedule's last tick) are deleted.
SCHEDULE_TICK_KEEP = 3600.0
# Maintenance vacuums the live table or the history once its dead tuples reach both of these
# (a count, and a share of its live tuples), whether or not autovacuum would get there.
VACUUM_MIN_DEAD = 10_000
VACUUM_DEAD_SHARE = 0.1
# ... and the live table once it holds this many rows and this many times what the planner
# believes it holds: a plan cached while the table was nearly empty scans all of it (see
# WorkerStore.vacuum_churned).
VACUUM_OUTGROWN_ROWS = 10_000
VACUUM_OUTGROWN_FACTOR = 4.0
# Upper bounds (milliseconds) of the wait-time buckets the rollup counts jobs in, about six per
# decade from 1 ms to 2 hours. Stored counts are numbered by these bounds: never change them.
STATS_WAIT_BOUNDS_MS = tuple(float(m * 10**e) for e in range(7) for m in (1, 1.5, 2, 3, 5, 7))
# At most this many history rows finished since the rollup's watermark are read by one stats
# read; under a load that outruns the rollup, the rest is counted a second or two later.
STATS_TAIL_LIMIT = 20_000
# Per-minute counters are kept this long (seconds); the series reaches back at most a day.
STATS_KEEP = 2 * 24 * 3600.0
STATS_SERIES_MAX_MINUTES = 1440
# How far back (seconds) a listing of jobs reads the history: first the narrow windows, widened
# until the page is full, then at most LIST_WINDOW unless the caller names an older ``since``.
LIST_NARROW_WINDOWS = (60.0, 3600.0)
LIST_WINDOW = 24 * 3600.0
# A page newest first reads first the history from the finish time of this many pages' worth of
# the newest finished jobs (of its queue and states): a window by count, not by time.
LIST_FLOOR_PAGES = 2
# ... found among at most this many of the newest finished jobs (a few milliseconds to read).
LIST_FLOOR_SCAN = 5000


def resolve_dsn(dsn: str | None) -> str:
    """The DSN given, else ``CONVEYOR_DATABASE_URL``, else ``DATABASE_URL``."""
    if dsn:
        return dsn
    for name in DSN_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    raise ConfigurationError(
        "no database configured: pass a DSN to Conveyor(...) or set CONVEYOR_DATABASE_URL "
        "(or DATABASE_URL)"
    )


def resolve_read_dsn(read_dsn: str | None) -> str | None:
    """Where inspection reads go: the ``read_dsn`` given, else ``CONVEYOR_READ_DATABASE_URL``,
    else None (the primary)."""
    return read_dsn or os.environ.get(READ_DSN_VARIABLE) or None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything an application is configured with; built by :class:`~conveyor.Conveyor`."""

    dsn: str | None
    # LISTEN needs a session of its own: behind PgBouncer in transaction mode, a direct DSN.
    listen_dsn: str | None = None
    # A streaming standby for inspection reads, which may lag; what must be current (writes,
    # wait_for, a send's key answer, the workers' fencing) never goes there.
    read_dsn: str | None = None
    # The dsn is PgBouncer in transaction mode: no server-side prepared statements, and no LISTEN
    # through it (wake-ups and wait_for poll unless listen_dsn is given).
    pgbouncer: bool = False
    schema: str = DEFAULT_SCHEMA
    defaults: dict[str, Any] = field(default_factory=dict)
    max_payload_bytes: int = DEFAULT_PAYLOAD_LIMIT
    pool_min_size: int = 1
    pool_max_size: int = 10
    clock: Clock = database_clock
    # Seconds a dead letter (failed job) is kept before maintenance deletes it.
    dead_retention: float = DEFAULT_DEAD_RETENTION
    # OpenTelemetry's TracerProvider for sends and attempts; None: the global one.
    tracer_provider: Any = None
