"""Queue limits enforced by the database across workers: concurrency, singleton, rate limit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from conveyor import Conveyor, Job, JobState


async def workers(app: Conveyor, count: int) -> AsyncIterator[None]:
    """``count`` workers of concurrency 10 in this loop, as if on separate hosts."""
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(app.run_worker_async(stop=stop, concurrency=10, poll_interval=0.05))
        for _ in range(count)
    ]
    yield
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def all_done(app: Conveyor, queue: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await app.queue_stats_async(queue)).counts[JobState.COMPLETED] == n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{queue}: not all {n} jobs completed in {timeout}s")


class Overlap:
    """Counts how many handlers run at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def run(self, seconds: float) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


async def test_a_concurrency_limit_holds_across_three_workers(app_async: Conveyor) -> None:
    await app_async.create_queue_async("limited", concurrency=2)
    overlap = Overlap()
    free = Overlap()

    @app_async.job("limited")
    async def limited(job: Job) -> None:
        await overlap.run(0.05)

    @app_async.job("free")
    async def unlimited(job: Job) -> None:
        await free.run(0.05)

    await app_async.send_batch_async([("limited", {"n": n}) for n in range(30)])
    await app_async.send_batch_async([("free", {"n": n}) for n in range(30)])
    async for _ in workers(app_async, 3):
        await all_done(app_async, "limited", 30)
        await all_done(app_async, "free", 30)
    assert overlap.peak == 2  # reached, never exceeded
    assert free.peak > 2  # the limit is per queue


async def test_a_singleton_queue_runs_one_job_at_a_time(app_async: Conveyor) -> None:
    await app_async.create_queue_async("one", policy="singleton")
    overlap = Overlap()

    @app_async.job("one")
    async def one(job: Job) -> None:
        await overlap.run(0.02)

    await app_async.send_batch_async([("one", {"n": n}) for n in range(15)])
    async for _ in workers(app_async, 3):
        await all_done(app_async, "one", 15)
    assert overlap.peak == 1


async def test_a_rate_limit_holds_across_workers(app_async: Conveyor) -> None:
    await app_async.create_queue_async("paced", rate_limit=(10, 1))
    starts: list[float] = []

    @app_async.job("paced")
    async def paced(job: Job) -> None:
        starts.append(time.monotonic())

    await app_async.send_batch_async([("paced", {"n": n}) for n in range(25)])
    async for _ in workers(app_async, 3):
        await all_done(app_async, "paced", 25)
    starts.sort()
    # A full bucket of 10 at once, then 10 a second: 25 jobs take at least 1.5 s...
    assert starts[-1] - starts[0] >= 1.4
    # ...and no one-second window ever holds more than the bucket plus what refills in it.
    for i, first in enumerate(starts):
        in_window = sum(1 for s in starts[i:] if s - first < 1.0)
        assert in_window <= 20
    later = [s for s in starts if s - starts[0] >= 1.0]
    for i, first in enumerate(later):
        assert sum(1 for s in later[i:] if s - first < 1.0) <= 11
