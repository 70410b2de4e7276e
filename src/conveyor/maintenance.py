"""Leader-bound upkeep that runs inside ordinary workers: no extra process to deploy.

Recovery: jobs held by a worker whose heartbeat went stale (killed, frozen, cut off) are failed
for that attempt and retried at once, so a crash costs at most ``stale_after`` plus one
``interval``, never hours. Jobs running far past ``expire_in`` on a live worker that did not stop
them are failed the same way (the in-process deadline is the first line; this is the backstop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from conveyor.errors import DatabaseUnavailable
from conveyor.events import Event
from conveyor.leader import Lease
from conveyor.worker.service import ServiceContext
from conveyor.worker.waiting import first_of

log = logging.getLogger("conveyor.maintenance")


class Recovery:
    """Recover the jobs of dead workers and of attempts far past their deadline."""

    def __init__(self, *, stale_after: float = 30.0, interval: float = 5.0) -> None:
        self.stale_after = stale_after
        self.interval = interval

    async def run(self, context: ServiceContext, stop: asyncio.Event) -> None:
        """Every ``interval`` seconds (jittered), if this worker holds the lease, recover jobs."""
        lease = Lease(context.store, "maintenance", context.worker_id, ttl=self.interval * 3)
        held = False
        try:
            while not stop.is_set():
                await first_of(stop.wait(), asyncio.sleep(self.interval * (0.5 + random.random())))
                if stop.is_set():
                    break
                try:
                    held = await lease.hold()
                    if held:
                        await self._recover(context)
                except DatabaseUnavailable as exc:
                    context.events.emit(
                        Event("worker.error", context.worker_id, error={"message": str(exc)})
                    )
        finally:
            if held:
                with contextlib.suppress(DatabaseUnavailable):
                    await lease.release()

    async def _recover(self, context: ServiceContext) -> None:
        changed = await context.store.job_recover(
            self.stale_after, self.stale_after, context.clock()
        )
        for job in changed:
            name = "job.dead" if job.state == "failed" else "job.retried"
            log.warning("recovered job %s of queue %s: now %s", job.id, job.queue, job.state)
            context.events.emit(Event(name, context.worker_id))
