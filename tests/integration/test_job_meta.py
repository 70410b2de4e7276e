"""Job metadata beside the payload (migration 0009): the tick a schedule sent a job for, and the
meta option of SQL send()."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from conveyor import Conveyor, FrozenClock, Job
from conveyor._store.worker_store import WorkerStore
from conveyor.events import Events
from conveyor.scheduler import Scheduler
from conveyor.worker.service import ServiceContext


async def test_backfilled_schedule_jobs_carry_the_tick_they_stand_for(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    clock = FrozenClock(datetime(2031, 1, 1, 8, 30, tzinfo=UTC))
    ticks: list[tuple[datetime | None, str]] = []
    async with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:

        @app.job("report")
        async def report(job: Job) -> None:
            ticks.append((job.scheduled_for, job.data["kind"]))

        await app.schedule_async(
            "hourly", "0 * * * *", queue="report", data={"kind": "hourly"}, missed="backfill"
        )
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("UPDATE {}.schedule SET created_at = %s").format(
                    sql.Identifier(conveyor_schema)
                ),
                [clock()],
            )
        store = WorkerStore(conveyor_dsn, conveyor_schema, min_size=0, max_size=2)
        try:
            clock.advance(timedelta(hours=2))  # 10:30: the 09:00 and 10:00 ticks were missed
            await Scheduler().fire_due(ServiceContext(store, uuid.uuid4(), Events(), clock))
        finally:
            await store.close()
        queued = await app.list_jobs_async(queue="report", order="asc")
        assert sorted(j.scheduled_for for j in queued if j.scheduled_for) == [
            datetime(2031, 1, 1, 9, tzinfo=UTC), datetime(2031, 1, 1, 10, tzinfo=UTC)
        ]  # fmt: skip
        await app.drain_async()
    assert sorted(ticks, key=lambda t: t[0] or clock()) == [
        (datetime(2031, 1, 1, 9, tzinfo=UTC), "hourly"),
        (datetime(2031, 1, 1, 10, tzinfo=UTC), "hourly"),
    ]


def test_a_job_sent_without_a_schedule_has_no_tick_and_no_meta(app: Conveyor) -> None:
    job = app.get_job(app.send("plain", {"n": 1}))
    assert (job.meta, job.scheduled_for) == (None, None)


def test_sql_send_stores_the_meta_option(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    meta = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    send = sql.SQL("SELECT {}.send('q', '{{}}', %s::jsonb)").format(sql.Identifier(conveyor_schema))
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        row = conn.execute(send, [psycopg.types.json.Jsonb({"meta": meta})]).fetchone()
        assert row is not None
        assert app.get_job(row[0]).meta == meta
        for bad in ({"meta": "text"}, {"meta": [1]}, {"meta": None}):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="meta must be"):
                conn.execute(send, [psycopg.types.json.Jsonb(bad)])
    assert len(app.list_jobs(queue="q")) == 1  # the refused sends wrote nothing


def test_a_finished_jobs_meta_is_kept_in_the_history(app: Conveyor, conveyor_dsn: str) -> None:
    from conveyor import Fail, JobState

    @app.job("kept")
    def handle(job: Job) -> None:
        if job.data["fail"]:
            raise Fail("no")

    meta = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    send = f"SELECT {app.schema}.send('kept', %s, %s)"
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        ids = [
            conn.execute(send, [psycopg.types.json.Jsonb({"fail": fail}),
                                psycopg.types.json.Jsonb({"meta": meta})]).fetchone()[0]  # type: ignore[index]
            for fail in (False, True, False)
        ]  # fmt: skip
    app.cancel(ids[2])
    assert app.drain() == 2
    finished = [app.get_job(i) for i in ids]
    assert [j.state for j in finished] == [JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED]
    assert [j.meta for j in finished] == [meta] * 3
    assert [j.meta for j in app.list_jobs(queue="kept")] == [meta] * 3
    app.retry_dead(ids[1])  # back to the live table with it
    assert app.get_job(ids[1]).meta == meta
