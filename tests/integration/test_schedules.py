"""Recurring jobs against a real PostgreSQL: persistence, exactly one job per tick however many
schedulers race, missed ticks, and workers firing a per-second schedule together."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from conveyor import Conveyor, FrozenClock, Job, JobState, ScheduleNotFound
from conveyor._store.worker_store import WorkerStore
from conveyor.errors import InvalidOption, InvalidQueueName, UnknownOption
from conveyor.events import Events
from conveyor.scheduler import Scheduler
from conveyor.worker.service import ServiceContext


async def test_schedules_persist_and_can_be_replaced_and_removed(app_async: Conveyor) -> None:
    made = await app_async.schedule_async(
        "daily-digest", "0 8 * * 1-5", queue="reports", data={"kind": "digest"},
        tz="Europe/Paris", priority=4, retry_limit=1, expire_in=60,
    )  # fmt: skip
    assert (made.name, made.cron, made.every, made.tz, made.queue) == (
        "daily-digest", "0 8 * * 1-5", None, "Europe/Paris", "reports"
    )  # fmt: skip
    assert made.data == {"kind": "digest"}
    assert made.options == {"priority": 4, "retry_limit": 1, "expire_in": 60.0}
    assert made.missed == "skip" and made.last_tick is None
    again = await app_async.schedule_async("daily-digest", every=timedelta(minutes=5))
    assert (again.cron, again.every, again.queue) == (None, 300.0, "daily-digest")
    assert [s.name for s in await app_async.list_schedules_async()] == ["daily-digest"]
    assert (await app_async.get_schedule_async("daily-digest")).every == 300
    assert await app_async.unschedule_async("daily-digest") is True
    assert await app_async.unschedule_async("daily-digest") is False
    with pytest.raises(ScheduleNotFound):
        await app_async.get_schedule_async("daily-digest")


@pytest.mark.parametrize(
    ("args", "options", "error"),
    [
        (("s", "61 * * * *"), {}, InvalidOption),
        (("s", "0 0 30 2 *"), {}, InvalidOption),
        (("s", "* * * * *"), {"tz": "Nowhere/Land"}, InvalidOption),
        (("s",), {}, InvalidOption),
        (("s", "* * * * *"), {"every": 5}, InvalidOption),
        (("s", "* * * * *"), {"missed": "sometimes"}, InvalidOption),
        (("bad name", "* * * * *"), {}, InvalidQueueName),
        (("s", "* * * * *"), {"retry_limt": 1}, UnknownOption),
        (("s", "* * * * *"), {"depends_on": [str(uuid.uuid4())]}, InvalidOption),
    ],
)
def test_bad_schedules_are_refused(
    app: Conveyor, args: tuple[str, ...], options: dict[str, object], error: type
) -> None:
    with pytest.raises(error):
        app.schedule(*args, **options)  # type: ignore[arg-type]
    assert app.list_schedules() == []


async def scheduler_context(dsn: str, schema: str, clock: FrozenClock) -> ServiceContext:
    store = WorkerStore(dsn, schema, min_size=0, max_size=2)
    return ServiceContext(store, uuid.uuid4(), Events(), clock)


async def test_each_tick_sends_one_job_however_many_schedulers_race(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    clock = FrozenClock(datetime(2031, 1, 1, 8, 59, 30, tzinfo=UTC))
    async with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            await app.schedule_async("tick", "* * * * *", data={"n": 1}, missed="backfill")
            conn.execute(  # created in the past, as if the schedule had existed for a while
                f"UPDATE {conveyor_schema}.schedule SET created_at = %s", [clock()]
            )
        contexts = [await scheduler_context(conveyor_dsn, conveyor_schema, clock) for _ in "abc"]
        try:
            clock.advance(150)  # 09:02:00: ticks at 09:00, 09:01 and 09:02
            await asyncio.gather(*(Scheduler().fire_due(c) for c in contexts))
            await asyncio.gather(*(Scheduler().fire_due(c) for c in contexts))
        finally:
            for context in contexts:
                await context.store.close()
        jobs = await app.list_jobs_async(queue="tick", order="asc")
        assert len(jobs) == 3
        assert all(j.data == {"n": 1} and j.state is JobState.CREATED for j in jobs)
        assert (await app.get_schedule_async("tick")).last_tick == clock().replace(second=0)


async def test_skip_sends_only_the_newest_missed_tick(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    clock = FrozenClock(datetime(2031, 1, 1, 0, 0, 30, tzinfo=UTC))
    async with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        await app.schedule_async("hourly", "0 * * * *", queue="h", retry_limit=7)
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE {conveyor_schema}.schedule SET created_at = %s", [clock()])
        context = await scheduler_context(conveyor_dsn, conveyor_schema, clock)
        try:
            clock.advance(timedelta(hours=5))  # 05:00:30: five ticks missed
            await Scheduler().fire_due(context)
            jobs = await app.list_jobs_async(queue="h")
            assert len(jobs) == 1 and jobs[0].retry_limit == 7
            clock.advance(timedelta(minutes=59, seconds=30))  # 06:00:00
            wait = await Scheduler(interval=3600).fire_due(context)
            assert len(await app.list_jobs_async(queue="h")) == 2
            assert wait == 3600  # the next tick is an hour away
        finally:
            await context.store.close()


async def run_workers(app: Conveyor, count: int) -> AsyncIterator[None]:
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(app.run_worker_async(stop=stop, poll_interval=0.2))
        for _ in range(count)
    ]
    yield
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 30)


async def test_three_workers_fire_a_per_second_schedule_once_per_tick(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    ran: list[str] = []

    @app_async.job("every.second")
    async def every_second(job: Job) -> None:
        ran.append(str(job.id))

    await app_async.schedule_async("every.second", "* * * * * *")
    async for _ in run_workers(app_async, 3):
        await asyncio.sleep(10)
    with psycopg.connect(conveyor_dsn) as conn:
        ticks = conn.execute(
            f"SELECT tick_at, job_id FROM {app_async.schema}.schedule_tick ORDER BY tick_at"
        ).fetchall()
    assert len(ticks) >= 9
    seconds = [t[0] for t in ticks]
    assert len(set(seconds)) == len(seconds)  # one row, so one job, per tick
    assert all((b - a).total_seconds() == 1 for a, b in itertools.pairwise(seconds))
    jobs = await app_async.list_jobs_async(queue="every.second", limit=1000)
    assert sorted(str(j.id) for j in jobs) == sorted(str(t[1]) for t in ticks)
    assert len(set(ran)) == len(ran)  # and each ran once


def test_a_crontab_text_creates_schedules_and_can_prune(app: Conveyor) -> None:
    made = app.schedule_crontab(
        """
        # the helpdesk
        0 9 10 * * bills.monthly ?tz=Asia/Ulaanbaatar
        */15 * * * * reports.refresh {"full": false} ?name=refresh&priority=3&missed=backfill
        */5 * * * * * heartbeat
        """
    )
    assert [(s.name, s.cron, s.queue, s.tz) for s in made] == [
        ("bills.monthly", "0 9 10 * *", "bills.monthly", "Asia/Ulaanbaatar"),
        ("refresh", "*/15 * * * *", "reports.refresh", "UTC"),
        ("heartbeat", "*/5 * * * * *", "heartbeat", "UTC"),
    ]
    refresh = app.get_schedule("refresh")
    assert (refresh.data, refresh.options, refresh.missed) == (
        {"full": False}, {"priority": 3}, "backfill"
    )  # fmt: skip
    app.schedule_crontab("0 9 10 * * bills.monthly", prune=True)
    assert [s.name for s in app.list_schedules()] == ["bills.monthly"]


@pytest.mark.parametrize(
    "text",
    [
        "0 9 10 * *",
        "0 9 10 * * q {not json}",
        "61 9 10 * * q",
        "0 9 10 * * q ?tz=Nowhere",
        "0 9 * * * q\n0 10 * * * q",
        "0 9 * * * q ?prority=1",
    ],
)
def test_a_bad_crontab_writes_nothing(app: Conveyor, text: str) -> None:
    with pytest.raises((InvalidOption, UnknownOption)):
        app.schedule_crontab("0 8 * * * fine\n" + text)
    assert app.list_schedules() == []


async def test_a_worker_writes_the_declared_schedules_again_at_start(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    @app_async.job("declared")
    async def declared(job: Job) -> None:
        pass

    await app_async.schedule_async("declared", "0 0 1 1 *")
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(f"DELETE FROM {app_async.schema}.schedule")
    await app_async.drain_async()
    assert [s.name for s in await app_async.list_schedules_async()] == ["declared"]
