"""Fire the ticks of recurring jobs, on whichever worker holds the scheduler lease.

Every loop reads the schedules, works out which ticks fell due (see :mod:`conveyor.cron`), and
fires them through ``fire_schedule``, whose tick rows make each tick send exactly one job even
when two leaders overlap during a handover. It then sleeps until the next tick, at most one
second, so a per-second schedule keeps up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import UTC, datetime

from conveyor.cron import due_ticks, next_tick
from conveyor.errors import DatabaseUnavailable
from conveyor.events import Event
from conveyor.leader import Lease
from conveyor.worker.service import ServiceContext
from conveyor.worker.waiting import first_of

log = logging.getLogger("conveyor.scheduler")


class Scheduler:
    """The leader-bound loop that turns schedule ticks into jobs."""

    def __init__(self, *, interval: float = 1.0, lease_ttl: float = 10.0) -> None:
        self.interval = interval
        self.lease_ttl = lease_ttl
        self._bad: dict[str, str] = {}  # schedules skipped, with the reason reported

    async def run(self, context: ServiceContext, stop: asyncio.Event) -> None:
        """Fire due ticks until ``stop`` is set, while this worker holds the lease."""
        lease = Lease(
            context.store, "scheduler", context.worker_id, self.lease_ttl, context.stale_after
        )
        held = False
        try:
            while not stop.is_set():
                wait = self.interval
                try:
                    held = await lease.hold()
                    if held:
                        wait = min(wait, await self.fire_due(context))
                except DatabaseUnavailable as exc:
                    context.events.emit(
                        Event("worker.error", context.worker_id, error={"message": str(exc)})
                    )
                pause = max(0.01, wait) + random.random() * 0.01
                await first_of(stop.wait(), asyncio.sleep(pause))
        finally:
            if held:
                with contextlib.suppress(DatabaseUnavailable):
                    await lease.release()

    async def fire_due(self, context: ServiceContext) -> float:
        """Fire every due tick now; return the seconds until the next one.

        A schedule that cannot be evaluated (an unknown time zone or a bad cron expression
        written from SQL) is skipped and reported once (log and ``worker.error``); the others
        fire as usual. ``conveyor doctor`` lists it until it is fixed.
        """
        now = context.clock() or datetime.now(UTC)
        soonest = self.interval
        for schedule in await context.store.schedule_list():
            if not schedule.enabled:
                continue
            try:
                ticks = due_ticks(
                    cron=schedule.cron,
                    every=schedule.every,
                    tz=schedule.tz,
                    anchor=schedule.created_at,
                    last_tick=schedule.last_tick,
                    now=now,
                    missed=schedule.missed,
                    backfill_limit=schedule.backfill_limit,
                )
                upcoming = next_tick(
                    cron=schedule.cron,
                    every=schedule.every,
                    tz=schedule.tz,
                    anchor=schedule.created_at,
                    now=now,
                )
            except Exception as exc:
                self._poisoned(context, schedule.name, exc)
                continue
            self._bad.pop(schedule.name, None)
            if ticks:
                jobs = await context.store.schedule_fire(schedule.name, ticks)
                log.debug("schedule %s fired %d tick(s)", schedule.name, len(jobs))
            soonest = min(soonest, (upcoming - now).total_seconds())
        return soonest

    def _poisoned(self, context: ServiceContext, name: str, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if self._bad.get(name) == reason:
            return  # reported already; doctor keeps listing it
        self._bad[name] = reason
        log.error("schedule %s skipped: it cannot be evaluated (%s)", name, reason)
        context.events.emit(
            Event(
                "worker.error",
                context.worker_id,
                error={"service": "scheduler", "schedule": name, "message": reason},
            )
        )
