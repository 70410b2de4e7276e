"""Keep the counters that queue_stats, the per-minute series and the dashboard read.

One worker at a time, the holder of the ``stats`` lease, adds the history rows that finished
since the last pass to per-minute buckets and per-queue totals (``stats_rollup`` in
``sql/migrations/0011_counters.sql``), chunk after chunk until it has caught up. Reads then need
only those small tables and the few rows finished since, never a scan of the history, and the
hot path (send, fetch, ack) writes no counter. Once a minute it samples each queue's backlog;
once an hour it deletes per-minute rows older than ``keep`` and analyzes the queue table.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import UTC, datetime

from conveyor.config import STATS_KEEP
from conveyor.errors import DatabaseUnavailable
from conveyor.events import Event
from conveyor.leader import Lease
from conveyor.worker.service import ServiceContext
from conveyor.worker.waiting import first_of

PRUNE_INTERVAL = 3600.0


class StatsRollup:
    """The leader-bound loop that counts finished jobs."""

    def __init__(
        self,
        *,
        interval: float = 1.0,
        lag: float = 0.5,
        hold: float = 60.0,
        chunk: int = 50_000,
        keep: float = STATS_KEEP,
        lease_ttl: float = 10.0,
    ) -> None:
        self.interval = interval
        # Rows younger than this are left to the next pass: an ack that started a moment ago
        # may not have committed yet.
        self.lag = lag
        # The longest an open transaction (of any client) holds the counters back: past it,
        # rows that transaction finishes go uncounted rather than every count standing still.
        self.hold = hold
        self.chunk = chunk
        self.keep = keep
        self.lease_ttl = lease_ttl
        self._sampled: int | None = None  # the minute whose backlog was sampled last
        self._pruned_at: float | None = None

    async def run(self, context: ServiceContext, stop: asyncio.Event) -> None:
        """Every ``interval`` seconds (jittered), while this worker holds the lease, catch up."""
        lease = Lease(
            context.store, "stats", context.worker_id, self.lease_ttl, context.stale_after
        )
        held = False
        try:
            while not stop.is_set():
                await first_of(stop.wait(), asyncio.sleep(self.interval * (0.5 + random.random())))
                if stop.is_set():
                    break
                try:
                    held = await lease.hold()
                    if held:
                        await self.roll(context, stop)
                except DatabaseUnavailable as exc:
                    context.events.emit(
                        Event("worker.error", context.worker_id, error={"message": str(exc)})
                    )
        finally:
            if held:
                with contextlib.suppress(DatabaseUnavailable):
                    await lease.release()

    async def roll(self, context: ServiceContext, stop: asyncio.Event | None = None) -> int:
        """Count what finished since the last pass (until caught up or stopped), sample the
        backlog once a minute and prune once an hour; how many jobs were counted."""
        total = 0
        while stop is None or not stop.is_set():
            counted, _ = await context.store.stats_rollup(
                context.clock(), self.lag, self.hold, self.chunk
            )
            total += counted
            if counted < self.chunk:
                break
        now = context.clock()
        minute = int((now or datetime.now(UTC)).timestamp() // 60)
        if minute != self._sampled:
            await context.store.stats_sample_backlog(now)
            self._sampled = minute
        if self._pruned_at is None or time.monotonic() - self._pruned_at >= PRUNE_INTERVAL:
            await context.store.stats_prune(self.keep, now)
            self._pruned_at = time.monotonic()
        return total
