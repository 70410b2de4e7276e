"""Pausing a queue: enforced by the claim in the database, so it holds on every worker at once
and across restarts; sends are accepted, running jobs finish, resume runs the backlog."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from conveyor import Conveyor, FrozenClock, InvalidQueueName, Job, JobState, QueueNotFound


async def workers(app: Conveyor, count: int) -> AsyncIterator[None]:
    """``count`` workers in this loop, as if on separate hosts."""
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(app.run_worker_async(stop=stop, concurrency=4, poll_interval=0.05))
        for _ in range(count)
    ]
    yield
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_a_paused_queue_runs_nothing_on_running_workers_its_running_job_finishes_and_resume_runs_it(  # noqa: E501
    app_async: Conveyor,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []

    @app_async.job("reports")
    async def report(job: Job) -> None:
        if job.data.get("long"):
            started.set()
            await release.wait()
        ran.append(f"reports {job.data['n']}")

    @app_async.job("mail")
    async def mail(job: Job) -> None:
        ran.append(f"mail {job.data['n']}")

    long_id = await app_async.send_async("reports", {"n": 0, "long": True})
    async for _ in workers(app_async, 2):
        await asyncio.wait_for(started.wait(), 10)
        paused = await app_async.pause_queue_async("reports")
        assert paused.paused
        ids = [await app_async.send_async("reports", {"n": n}) for n in (1, 2, 3)]
        for n in (1, 2, 3):
            await app_async.send_async("mail", {"n": n})

        async def mail_done() -> bool:
            return (await app_async.queue_stats_async("mail")).counts[JobState.COMPLETED] == 3

        await until(mail_done)
        release.set()

        async def long_done() -> bool:
            return (await app_async.get_job_async(long_id)).state is JobState.COMPLETED

        await until(long_done)
        await asyncio.sleep(0.3)  # several polls of both workers
        assert [(await app_async.get_job_async(i)).state for i in ids] == [JobState.CREATED] * 3
        assert sorted(ran) == ["mail 1", "mail 2", "mail 3", "reports 0"]

        begin = time.monotonic()
        resumed = await app_async.resume_queue_async("reports")
        assert not resumed.paused

        async def reports_done() -> bool:
            return (await app_async.queue_stats_async("reports")).counts[JobState.COMPLETED] == 4

        await until(reports_done)
        assert time.monotonic() - begin < 5


async def test_a_pause_hands_back_the_claims_a_worker_holds_unstarted_in_its_buffer(
    app_async: Conveyor,
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    ran: list[int] = []

    @app_async.job("reports")
    async def report(job: Job) -> None:
        ran.append(job.data["n"])
        started.set()
        await release.wait()

    ids = [await app_async.send_async("reports", {"n": n}) for n in range(5)]
    stop = asyncio.Event()
    worker = asyncio.create_task(
        app_async.run_worker_async(stop=stop, concurrency=1, prefetch=10, poll_interval=0.05)
    )
    try:
        await asyncio.wait_for(started.wait(), 10)

        async def claimed() -> bool:
            jobs = [await app_async.get_job_async(i) for i in ids]
            return all(j.state is JobState.ACTIVE for j in jobs)

        await until(claimed)  # one running, four claimed and waiting in the worker's buffer
        await app_async.pause_queue_async("reports")

        async def handed_back() -> bool:
            jobs = [await app_async.get_job_async(i) for i in ids]
            return sum(j.state is JobState.CREATED and j.attempt == 0 for j in jobs) == 4

        await until(handed_back)
        release.set()
        await asyncio.sleep(0.3)  # the slot is free: nothing of the paused queue starts
        assert ran == [0]
        await app_async.resume_queue_async("reports")

        async def all_done() -> bool:
            counts = (await app_async.queue_stats_async("reports")).counts
            return counts[JobState.COMPLETED] == 5

        await until(all_done)
        assert sorted(ran) == [0, 1, 2, 3, 4]
        assert [(await app_async.get_job_async(i)).attempt for i in ids] == [1] * 5
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)


def test_a_pause_survives_a_restart_and_holds_for_limited_queues(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    with Conveyor(conveyor_dsn, schema=conveyor_schema) as first:
        first.create_queue("limited", concurrency=2)
        first.send("limited", {})
        first.send("free", {})
        first.pause_queue("limited")
        first.pause_queue("free")
        first.pause_queue("free")  # pausing twice changes nothing
    with Conveyor(conveyor_dsn, schema=conveyor_schema) as second:
        second.job("limited")(lambda job: None)
        second.job("free")(lambda job: None)
        assert second.drain() == 0
        assert [q.paused for q in second.list_queues()] == [True, True]
        second.resume_queue("free")
        second.resume_queue("free")  # resuming twice changes nothing
        assert second.drain() == 1
        assert second.queue_stats("limited").queued == 1


def test_a_paused_queue_accepts_sends_and_is_shown_paused_not_stuck(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    clock = FrozenClock()
    with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        app.send("held", {"n": 1})
        app.send("late", {"n": 1})
        app.pause_queue("held")
        app.send("held", {"n": 2})
        clock.advance(timedelta(minutes=10))
        assert app.get_queue("held").paused and not app.get_queue("late").paused
        stats = {s.queue: s for s in app.queue_stats()}
        assert (stats["held"].paused, stats["held"].queued) == (True, 2)
        assert not stats["late"].paused
        report = app.health(max_wait=60)
        assert [(q.queue, q.paused, q.depth) for q in report.queues] == [
            ("held", True, 2),
            ("late", False, 1),
        ]
        assert [p for p in report.problems if "held" in p] == []
        assert [p for p in report.problems if "late" in p] != []


def test_pausing_an_unknown_or_badly_named_queue_raises_and_writes_nothing(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    with pytest.raises(QueueNotFound):
        app.pause_queue("nowhere")
    with pytest.raises(QueueNotFound):
        app.resume_queue("nowhere")
    with pytest.raises(InvalidQueueName):
        app.pause_queue("bad name!")
    with psycopg.connect(conveyor_dsn) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.queue_pause").format(
            sql.Identifier(conveyor_schema)
        )
        assert conn.execute(query).fetchone() == (0,)
    assert app.list_queues() == []


def test_deleting_a_paused_queue_deletes_its_pause(app: Conveyor) -> None:
    app.send("gone", {})
    app.pause_queue("gone")
    app.delete_queue("gone")
    app.send("gone", {})
    assert not app.get_queue("gone").paused
