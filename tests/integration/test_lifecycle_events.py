"""Lifecycle events added for issue 16: ``job.cancelled``, and the attempt's duration on the
outcome events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from conveyor import Conveyor, Job, JobState
from conveyor.events import Event


async def worker_in_background(
    app: Conveyor, **options: Any
) -> AsyncIterator[tuple[asyncio.Event, asyncio.Task[int]]]:
    stop = asyncio.Event()
    task = asyncio.create_task(app.run_worker_async(stop=stop, **options))
    yield stop, task
    stop.set()
    await asyncio.wait_for(task, 30)


async def test_a_running_job_cancelled_is_reported_once_by_its_worker(
    app_async: Conveyor,
) -> None:
    cancelled: list[Event] = []
    app_async.on("job.cancelled")(cancelled.append)
    started = asyncio.Event()

    @app_async.job("long")
    async def long(job: Job) -> None:
        started.set()
        await asyncio.sleep(30)

    job_id = await app_async.send_async("long", {})
    async for _stop, _task in worker_in_background(app_async, poll_interval=0.1):
        await asyncio.wait_for(started.wait(), 10)
        await app_async.cancel_async(job_id)
        for _ in range(500):
            if cancelled:
                break
            await asyncio.sleep(0.01)
    assert [(e.job.id if e.job else None, e.worker_id is not None) for e in cancelled] == [
        (job_id, True)
    ]
    assert (await app_async.get_job_async(job_id)).state is JobState.CANCELLED


def test_a_queued_job_cancelled_is_reported_by_the_app_that_cancelled_it(app: Conveyor) -> None:
    cancelled: list[Event] = []
    app.on("job.cancelled")(cancelled.append)
    job_id = app.send("later", {}, start_after=3600)
    app.cancel(job_id)
    app.cancel(job_id)  # already cancelled: nothing happens, nothing is reported
    assert [(e.job.id if e.job else None, e.worker_id) for e in cancelled] == [(job_id, None)]


async def test_outcome_events_carry_how_long_the_attempt_ran(app_async: Conveyor) -> None:
    seen: list[tuple[str, float | None]] = []
    for name in ("job.completed", "job.retried", "job.failed", "job.started"):
        app_async.on(name)(lambda e: seen.append((e.name, e.duration)))

    @app_async.job("timed", retry_limit=1, retry_delay=0)
    async def timed(job: Job) -> str:
        await asyncio.sleep(0.05)
        if job.attempt == 1:
            raise RuntimeError("once")
        return "ok"

    await app_async.send_async("timed", {})
    await app_async.drain_async()
    names = [name for name, _ in seen]
    assert names == ["job.started", "job.retried", "job.started", "job.completed"]
    durations = dict(seen[1::2])
    assert all(d is not None and 0.05 <= d < 5 for d in durations.values()), durations
    assert seen[0][1] is None  # not an outcome
