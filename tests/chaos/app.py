"""The app that the chaos harness runs in real worker processes (``tests.chaos.app:app``).

Every attempt records its start in the ``ledger`` table over a connection of its own that does
not pass through the harness's proxy, retrying until it gets through: the ledger is the
harness's instrument and must not fail a job itself.

The ledger row carries the moment the worker began the attempt (its ``job.started`` event, on
the event loop, right after the worker judged its claim fresh) as well as the moment the row
was written. Only the first says whether a worker started an attempt it no longer held: a
handler begun before a SIGSTOP, or one retrying its ledger write through a database restart,
writes its row after a newer attempt's although it began first.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

import psycopg

from conveyor import Conveyor, Job
from conveyor.events import Event

SCHEMA = os.environ["CONVEYOR_SCHEMA"]
LEDGER_DSN = os.environ["CHAOS_LEDGER_DSN"]


class WallClockJump:
    """This process's wall clock (``time.time``, ``time.time_ns``) plus the offset in seconds that
    the harness writes to the clock file: a host whose clock jumped. The monotonic clock does
    not move, as on a real host. Conveyor takes "now" from the database by default, so a jump
    should change nothing but the time in job ids and log lines."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0.0
        self.read_at = -1.0
        self.real_time = time.time
        self.real_time_ns = time.time_ns

    def current_offset(self) -> float:
        if time.monotonic() - self.read_at > 0.2:
            self.read_at = time.monotonic()
            try:
                with open(self.path) as f:
                    self.offset = float(f.read() or 0)
            except (OSError, ValueError):
                self.offset = 0.0
        return self.offset

    def install(self) -> None:
        time.time = lambda: self.real_time() + self.current_offset()
        time.time_ns = lambda: self.real_time_ns() + int(self.current_offset() * 1e9)


_clock = WallClockJump(os.environ["CHAOS_CLOCK_FILE"])
_clock.install()
app = Conveyor(os.environ["CONVEYOR_DATABASE_URL"], schema=SCHEMA)
_local = threading.local()
_began: dict[tuple[uuid.UUID, int], float] = {}  # (job, attempt): real wall time it began


@app.on("job.started")
def _began_attempt(event: Event) -> None:
    assert event.job is not None
    _began[(event.job.id, event.job.attempt)] = _clock.real_time()


def ledger(job: Job) -> None:
    """Record this attempt's start; keep trying through restarts and cut connections."""
    began = _began.pop((job.id, job.attempt), None)
    deadline = time.monotonic() + 60
    while True:
        try:
            conn = getattr(_local, "conn", None)
            if conn is None or conn.closed or conn.broken:
                conn = _local.conn = psycopg.connect(
                    LEDGER_DSN, autocommit=True, connect_timeout=2, application_name="ledger"
                )
            conn.execute(
                f'INSERT INTO "{SCHEMA}".ledger (job_id, attempt, pid, began_at) '
                "VALUES (%s, %s, %s, to_timestamp(%s))",
                [job.id, job.attempt, os.getpid(), began],
            )
            return
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            _local.conn = None
            time.sleep(0.2)


@app.job("chaos.work", retry_limit=8, retry_delay=0.2, retry_backoff=False, expire_in=60)
def work(job: Job) -> int:
    ledger(job)
    time.sleep(0.02 + random.random() * 0.08)
    return int(job.data["n"])


@app.job("chaos.doomed", retry_limit=2, retry_delay=0, retry_backoff=False)
def doomed(job: Job) -> None:
    ledger(job)
    raise RuntimeError("this job always fails")
