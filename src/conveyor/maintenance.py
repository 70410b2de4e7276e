"""Leader-bound upkeep that runs inside ordinary workers: no extra process to deploy.

One lease ("maintenance"), two duties on one jittered loop:

- Recovery, every ``interval``: jobs held by a worker whose heartbeat went stale (killed, frozen,
  cut off) are failed for that attempt and retried at once, so a crash costs at most
  ``stale_after`` plus one ``interval``, never hours. Jobs running far past ``expire_in`` on a live
  worker that did not stop them are failed the same way (the in-process deadline is the first
  line; this is the backstop).
- Cleanup, every ``cleanup_interval``: the history's partitions are created ahead as far as the
  longest retention in use and those that ended are detached and dropped whole (no row DELETE,
  no VACUUM after it), and the partitioned parent is analyzed every ``analyze_interval`` (which
  autovacuum never does). Dead letters past ``dead_retention``, closed throttle windows and tick
  rows no scheduler needs are deleted in chunks of ``chunk`` rows (short statements that skip
  locked rows, so workers never wait on them), chunk after chunk until none is left or the
  worker stops. After each chunk the leader pauses ``pace`` times as long as the chunk took, so
  cleanup takes at most a share of one connection whatever the backlog, and the hot path keeps
  the rest. A pass takes at most ``interval`` seconds of one loop and goes on in the next, so a
  large backlog of expired rows never delays recovery nor lets the lease lapse.
- Vacuum, every ``interval``: the live table (and the dead letters) are vacuumed once their dead
  tuples pile up. Every job leaves dead row versions in the live table (inserted, claimed,
  deleted); autovacuum visits a database once a naptime (a minute by default), or never where
  it is off, so at thousands of jobs a second the live table would swell between its visits.
  Never paced: a swollen live table is what would slow the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from conveyor._store.store_async import Flag
from conveyor.config import (
    DEFAULT_DEAD_RETENTION,
    DEFAULT_RETENTION,
    SCHEDULE_TICK_KEEP,
    VACUUM_DEAD_SHARE,
    VACUUM_MIN_DEAD,
)
from conveyor.errors import DatabaseUnavailable
from conveyor.events import Event
from conveyor.leader import Lease
from conveyor.worker.service import ServiceContext
from conveyor.worker.waiting import first_of

log = logging.getLogger("conveyor.maintenance")

# Live jobs per step of the cleanup's pause (see Maintenance._pause).
BACKLOG_ROWS = 10_000

RECOVERED_EVENTS = {
    "retry": ("job.attempt_failed", "job.retried"),
    "failed": ("job.attempt_failed", "job.failed", "job.dead"),
}


class Maintenance:
    """Recover the jobs of dead workers and of attempts far past their deadline; delete what
    outlived its retention."""

    def __init__(
        self,
        *,
        stale_after: float = 30.0,
        interval: float = 5.0,
        cleanup_interval: float = 60.0,
        dead_retention: float = DEFAULT_DEAD_RETENTION,
        default_retention: float = DEFAULT_RETENTION,
        chunk: int = 1000,
        pace: float = 1.0,
        analyze_interval: float = 600.0,
    ) -> None:
        self.stale_after = stale_after
        self.interval = interval
        self.cleanup_interval = cleanup_interval
        self.dead_retention = dead_retention
        # The app's retention: the history's partitions reach at least that far ahead.
        self.default_retention = default_retention
        self.chunk = chunk
        self.pace = pace
        self.analyze_interval = analyze_interval
        self._analyzed_at: float | None = None

    async def run(self, context: ServiceContext, stop: asyncio.Event) -> None:
        """Every ``interval`` seconds (jittered), if this worker holds the lease, recover jobs,
        and clean up when the last cleanup is ``cleanup_interval`` old."""
        lease = Lease(
            context.store, "maintenance", context.worker_id, self.interval * 3, self.stale_after
        )
        held = False
        cleaned_at: float | None = None
        try:
            while not stop.is_set():
                await first_of(stop.wait(), asyncio.sleep(self.interval * (0.5 + random.random())))
                if stop.is_set():
                    break
                try:
                    held = await lease.hold()
                    if not held:
                        cleaned_at = None
                        continue
                    await self._recover(context)
                    if cleaned_at is None or time.monotonic() - cleaned_at >= self.cleanup_interval:
                        budget = Budget(stop, self.interval)
                        await self._tidy(context, budget)
                        # Cut short: the rest waits for the next loop, not a cleanup_interval.
                        cleaned_at = None if budget.is_set() else time.monotonic()
                    await self._vacuum(context)
                except DatabaseUnavailable as exc:
                    self._failed(context, exc)
        finally:
            if held:
                with contextlib.suppress(DatabaseUnavailable):
                    await lease.release()

    async def _recover(self, context: ServiceContext) -> None:
        changed = await context.store.job_recover(
            self.stale_after, self.stale_after, context.clock()
        )
        # The attempt a dead worker held failed; the job is retried or, out of attempts, failed.
        # The lines about them are written by the log listeners of these events.
        for job in changed:
            names = RECOVERED_EVENTS["failed" if job.state == "failed" else "retry"]
            for name in names:
                context.events.emit(Event(name, context.worker_id, job_id=job.id, queue=job.queue))

    async def _tidy(self, context: ServiceContext, stop: Flag) -> None:
        # A cleanup that fails (a lock_timeout on partition DDL, a statement_timeout set by the
        # DBA) is reported, recorded for doctor, and tried again next time; it must not end
        # recovery with it.
        try:
            await self.clean(context, stop)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            log.exception("maintenance cleanup failed")
            self._failed(context, exc)
            with contextlib.suppress(Exception):
                await context.store.archive_note(context.clock(), failure=str(exc)[:500])

    async def _vacuum(self, context: ServiceContext) -> None:
        try:
            await context.store.vacuum_churned(VACUUM_MIN_DEAD, VACUUM_DEAD_SHARE)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            log.exception("maintenance vacuum failed")
            self._failed(context, exc)

    @staticmethod
    def _failed(context: ServiceContext, exc: Exception) -> None:
        context.events.emit(Event("worker.error", context.worker_id, error={"message": str(exc)}))

    async def clean(self, context: ServiceContext, stop: Flag) -> dict[str, int]:
        """One cleanup pass, until nothing is left or ``stop`` is set: history partitions
        created and dropped, and rows deleted per kind."""
        analyze = self._analyzed_at is None or (
            time.monotonic() - self._analyzed_at >= self.analyze_interval
        )
        counts = await context.store.maintain(
            dead_retention=self.dead_retention,
            default_retention=self.default_retention,
            tick_keep=SCHEDULE_TICK_KEEP,
            chunk=self.chunk,
            now=context.clock(),
            stop=stop,
            pace=self._pause,
            analyze=analyze,
        )
        if analyze:
            self._analyzed_at = time.monotonic()
        if any(counts.values()):
            log.info("maintenance: %s", counts)
        return counts

    async def _pause(self, took: float, backlog: int) -> None:
        # The more live jobs wait, the longer the pause: up to 8 times the chunk's time.
        if self.pace > 0:
            await asyncio.sleep(took * self.pace * min(8.0, 1.0 + backlog / BACKLOG_ROWS))


class Budget:
    """Set once ``stop`` is, or ``seconds`` after it was made."""

    def __init__(self, stop: Flag, seconds: float) -> None:
        self._stop = stop
        self._deadline = time.monotonic() + seconds

    def is_set(self) -> bool:
        """True once stopped or out of time."""
        return self._stop.is_set() or time.monotonic() >= self._deadline
