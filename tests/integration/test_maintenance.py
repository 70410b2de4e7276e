"""Maintenance against a real PostgreSQL: finished jobs leave after their own retention, dead
letters after the app's dead_retention, closed throttle windows and old tick rows go, in chunks,
and only on the worker holding the maintenance lease. Time moves by the app's clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from conveyor import Conveyor, Fail, FrozenClock, Job, JobState
from conveyor._store.queries import queries
from conveyor._store.worker_store import WorkerStore
from conveyor.errors import InvalidOption, JobNotFound
from conveyor.events import Events
from conveyor.maintenance import Maintenance
from conveyor.worker.service import ServiceContext

T0 = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)
NOTHING = {"history": 0, "dead_letters": 0, "throttle": 0, "schedule_ticks": 0}
PASS = {**NOTHING, "vacuumed": 0}


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def timed(conveyor_dsn: str, conveyor_schema: str, clock: FrozenClock) -> Iterator[Conveyor]:
    with Conveyor(
        conveyor_dsn, schema=conveyor_schema, clock=clock, dead_retention=timedelta(hours=1)
    ) as app:
        yield app


def seed_history(dsn: str, schema: str, n: int, state: str, finished: datetime) -> None:
    """``n`` finished jobs of queue 'seeded', kept for 60 s after ``finished``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {schema}.queue (name) VALUES ('seeded') ON CONFLICT DO NOTHING")
        conn.execute(
            f"""INSERT INTO {schema}.job_history
                (id, queue, state, run_at, retry_limit, retry_delay, retry_backoff, expire_in,
                 retention, created_at, finished_at)
                SELECT gen_random_uuid(), 'seeded', %s, %s, 0, 1, 'fixed', 60, 60, %s, %s
                FROM generate_series(1, %s)""",
            (state, finished, finished, finished, n),
        )


def count(dsn: str, schema: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()
    assert row is not None
    return int(row[0])


def test_history_is_deleted_in_chunks_until_none_is_left(
    timed: Conveyor, clock: FrozenClock, conveyor_dsn: str
) -> None:
    seed_history(conveyor_dsn, timed.schema, 2500, "completed", T0 - timedelta(seconds=61))
    seed_history(conveyor_dsn, timed.schema, 7, "completed", T0 - timedelta(seconds=59))
    assert timed.maintain(chunk=1000) == {**PASS, "history": 2500}
    assert count(conveyor_dsn, timed.schema, "job_history") == 7
    assert timed.maintain(chunk=1000) == PASS
    clock.advance(2)
    assert timed.maintain(chunk=3) == {**PASS, "history": 7}


def test_each_job_is_kept_for_its_own_retention(timed: Conveyor, clock: FrozenClock) -> None:
    timed.job("kept", lambda job: job.data)
    short = timed.send("kept", 1, retention=60)
    cancelled = timed.send("kept", 2, retention=60, start_after=10)
    timed.cancel(cancelled)
    long = timed.send("kept", 3, retention=3600)
    assert timed.drain() == 2
    clock.advance(59)
    assert timed.maintain()["history"] == 0
    clock.advance(2)
    assert timed.maintain()["history"] == 2
    for gone in (short, cancelled):
        with pytest.raises(JobNotFound):
            timed.get_job(gone)
    assert timed.get_job(long).state is JobState.COMPLETED
    clock.advance(3600)
    assert timed.maintain()["history"] == 1
    with pytest.raises(JobNotFound):
        timed.get_job(long)


def test_dead_letters_are_kept_until_the_dead_retention(
    timed: Conveyor, clock: FrozenClock
) -> None:
    def fail(job: Job) -> None:
        raise Fail("no")

    timed.job("doomed", fail)
    dead = timed.send("doomed", {}, retention=60)
    timed.drain()
    clock.advance(3599)
    assert timed.maintain() == PASS  # past its retention, but a dead letter
    assert timed.get_job(dead).state is JobState.FAILED
    clock.advance(2)
    assert timed.maintain() == {**PASS, "dead_letters": 1}
    with pytest.raises(JobNotFound):
        timed.get_job(dead)


def test_dead_letters_go_in_chunks_too(
    timed: Conveyor, clock: FrozenClock, conveyor_dsn: str
) -> None:
    seed_history(conveyor_dsn, timed.schema, 25, "failed", T0 - timedelta(hours=2))
    seed_history(conveyor_dsn, timed.schema, 4, "failed", T0 - timedelta(minutes=59))
    assert timed.maintain(chunk=10) == {**PASS, "dead_letters": 25}
    assert count(conveyor_dsn, timed.schema, "job_history") == 4


def test_closed_throttle_windows_are_deleted(
    timed: Conveyor, clock: FrozenClock, conveyor_dsn: str
) -> None:
    timed.send("throttled", {}, singleton_key="k", singleton_seconds=60)
    assert count(conveyor_dsn, timed.schema, "throttle") == 1
    assert timed.maintain()["throttle"] == 0
    clock.advance(61)
    assert timed.maintain()["throttle"] == 1
    assert count(conveyor_dsn, timed.schema, "throttle") == 0
    # A new window opens as usual afterwards.
    timed.send("throttled", {}, singleton_key="k", singleton_seconds=60)
    assert count(conveyor_dsn, timed.schema, "throttle") == 1


async def test_old_tick_rows_go_but_the_last_tick_stays(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    clock = FrozenClock(datetime.now(UTC))
    async with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        await app.schedule_async("tick", every=60)
        store = WorkerStore(conveyor_dsn, conveyor_schema, min_size=0, max_size=1)
        try:
            base = clock() - timedelta(hours=3)
            ticks = [base + timedelta(minutes=m) for m in range(0, 150, 30)]
            assert len(await store.schedule_fire("tick", ticks)) == 5
        finally:
            await store.close()
        # Ticks before the last one and older than an hour: 0, 30, 60 and 90 minutes after base.
        assert (await app.maintain_async())["schedule_ticks"] == 4
        assert count(conveyor_dsn, conveyor_schema, "schedule_tick") == 1
        clock.advance(timedelta(hours=5))
        assert (await app.maintain_async())["schedule_ticks"] == 0  # the last tick stays


def test_a_deleted_job_takes_its_completion_hook_along(
    timed: Conveyor, clock: FrozenClock, conveyor_dsn: str
) -> None:
    seed_history(conveyor_dsn, timed.schema, 3, "completed", T0 - timedelta(seconds=61))
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {timed.schema}.job_hook (job_id, on_complete) "
            f"SELECT id, 'hooks' FROM {timed.schema}.job_history"
        )
    assert timed.maintain()["history"] == 3
    assert count(conveyor_dsn, timed.schema, "job_hook") == 0


def test_dead_retention_is_validated(conveyor_dsn: str) -> None:
    for bad in (0, -1, "14d", float("nan")):
        with pytest.raises(InvalidOption, match="dead_retention"):
            Conveyor(conveyor_dsn, dead_retention=bad)  # type: ignore[arg-type]
    assert Conveyor(conveyor_dsn, dead_retention=timedelta(days=2)).settings.dead_retention == (
        2 * 86400
    )
    with pytest.raises(InvalidOption, match="chunk"):
        Conveyor(conveyor_dsn).maintain(chunk=0)


async def test_only_the_lease_holder_cleans_up(conveyor_dsn: str, conveyor_schema: str) -> None:
    seed_history(
        conveyor_dsn, conveyor_schema, 30, "completed", datetime.now(UTC) - timedelta(days=1)
    )
    store = WorkerStore(conveyor_dsn, conveyor_schema, min_size=0, max_size=2)
    ghost = uuid.uuid4()
    service = Maintenance(interval=0.2, cleanup_interval=0.2, chunk=7)
    context = ServiceContext(
        store=store, worker_id=uuid.uuid4(), events=Events(), clock=lambda: None
    )
    try:
        # Both holders are live workers: the lease of a worker without a heartbeat is free.
        await store.worker_register(ghost, "elsewhere", 1, ["q"], 1)
        await store.worker_register(context.worker_id, "here", 2, ["q"], 1)
        assert await store.leader_acquire("maintenance", ghost, 60, 30)
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(context, stop))
        await asyncio.sleep(0.5)
        assert count(conveyor_dsn, conveyor_schema, "job_history") == 30  # another holds it
        await store.leader_release("maintenance", ghost)
        for _ in range(100):
            if count(conveyor_dsn, conveyor_schema, "job_history") == 0:
                break
            await asyncio.sleep(0.05)
        assert count(conveyor_dsn, conveyor_schema, "job_history") == 0
        assert not await store.leader_acquire("maintenance", ghost, 60, 30)  # it holds the lease
        stop.set()
        await asyncio.wait_for(task, 10)
        assert await store.leader_acquire("maintenance", ghost, 60, 30)  # released on stop
    finally:
        await store.close()


async def test_a_pass_stops_between_chunks_when_told(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    seed_history(
        conveyor_dsn, conveyor_schema, 30, "completed", datetime.now(UTC) - timedelta(days=1)
    )
    store = WorkerStore(conveyor_dsn, conveyor_schema, min_size=0, max_size=1)
    context = ServiceContext(
        store=store, worker_id=uuid.uuid4(), events=Events(), clock=lambda: None
    )
    try:
        stop = asyncio.Event()
        stop.set()
        assert await Maintenance(chunk=7).clean(context, stop) == NOTHING
        assert await Maintenance(chunk=7).clean(context, asyncio.Event()) == {
            **NOTHING, "history": 30
        }  # fmt: skip
    finally:
        await store.close()


async def test_dead_tuples_that_pile_up_are_vacuumed(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    seed_history(
        conveyor_dsn, conveyor_schema, 1500, "completed", datetime.now(UTC) - timedelta(days=1)
    )
    store = WorkerStore(conveyor_dsn, conveyor_schema, min_size=0, max_size=1)
    try:
        assert await store.vacuum_churned(1000, 0.1) == []  # no dead tuples yet
        counts = await store.maintain(dead_retention=3600, tick_keep=3600, chunk=1000, now=None)
        assert counts["history"] == 1500
        vacuumed: list[str] = []
        for _ in range(50):  # the statistics of the delete arrive within a second or so
            vacuumed = await store.vacuum_churned(1000, 0.1)
            if vacuumed:
                break
            await asyncio.sleep(0.1)
        assert vacuumed == ["job_history"]
        assert await store.vacuum_churned(100_000, 0.1) == []  # under the count
    finally:
        await store.close()


def test_the_history_delete_walks_its_own_index_past_older_dead_letters(
    app: Conveyor, conveyor_dsn: str
) -> None:
    """100,000 dead letters finished before every other row, and two retentions: the delete
    takes job_history_expiry_idx for both, never job_history_finished_idx, which would walk
    every dead letter for each chunk (seen with a plain finished_at bound on 2M rows)."""
    s = app.schema
    columns = (
        "id, queue, state, run_at, retry_limit, retry_delay, retry_backoff, expire_in, "
        "retention, created_at, finished_at"
    )
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        for state, retention, days, n in (
            ("failed", 86400, 20, 100_000),
            ("completed", 86400, 2, 30_000),
            ("completed", 2_592_000, 2, 30_000),
        ):
            conn.execute(
                f"INSERT INTO {s}.job_history ({columns}) SELECT gen_random_uuid(), 'q', %s, "
                "now(), 0, 1, 'fixed', 60, %s, now(), now() - make_interval(days => %s) "
                "- make_interval(secs => g) FROM generate_series(1, %s) g",
                (state, retention, days, n),
            )
        conn.execute(f"ANALYZE {s}.job_history")
        named = queries(s)
        for retention in (86400, 2_592_000):
            plan = "\n".join(
                r[0]
                for r in conn.execute(
                    "EXPLAIN " + named["maintain_history"].sql,
                    {"retention": retention, "now": None, "limit": 1000},
                )
            )
            assert "job_history_expiry_idx" in plan, plan
            assert "job_history_finished_idx" not in plan, plan


async def test_a_failing_cleanup_is_reported_and_recovery_goes_on(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    async with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        await app.migrate_async()
        seed_history(
            conveyor_dsn, scratch_schema, 5, "completed", datetime.now(UTC) - timedelta(days=1)
        )
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE {scratch_schema}.throttle")  # every cleanup fails
        errors: list[str] = []
        events = Events()
        events.on("worker.error")(lambda e: errors.append(str(e.error)))
        store = WorkerStore(conveyor_dsn, scratch_schema, min_size=0, max_size=2)
        context = ServiceContext(
            store=store, worker_id=uuid.uuid4(), events=events, clock=lambda: None
        )
        stop = asyncio.Event()
        task = asyncio.create_task(
            Maintenance(stale_after=1, interval=0.1, cleanup_interval=0.1).run(context, stop)
        )
        try:
            for _ in range(100):
                if errors:
                    break
                await asyncio.sleep(0.05)
            assert errors and "throttle" in errors[0]
            job_id = await app.send_async("orphan", {})
            [claimed] = await store.job_fetch(["orphan"], uuid.uuid4(), 1, None)  # a dead worker
            assert claimed[0] == job_id
            for _ in range(100):
                if (await app.get_job_async(job_id)).state is not JobState.ACTIVE:
                    break
                await asyncio.sleep(0.05)
            assert (await app.get_job_async(job_id)).state is JobState.RETRY
            assert not task.done()
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await store.close()


async def test_a_long_cleanup_goes_on_over_several_loops_and_never_delays_recovery(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    schema = app_async.schema
    seed_history(conveyor_dsn, schema, 2000, "completed", datetime.now(UTC) - timedelta(days=1))
    store = WorkerStore(conveyor_dsn, schema, min_size=0, max_size=2)
    context = ServiceContext(
        store=store, worker_id=uuid.uuid4(), events=Events(), clock=lambda: None
    )
    # One row per statement: the pass takes seconds; each loop gives it 0.2 s at most, and a
    # cleanup_interval this long means only the cut-short passes going on can finish it.
    service = Maintenance(stale_after=1, interval=0.2, cleanup_interval=3600, chunk=1)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(context, stop))
    try:
        for _ in range(100):
            if count(conveyor_dsn, schema, "job_history") < 2000:
                break
            await asyncio.sleep(0.05)
        job_id = await app_async.send_async("orphan", {})
        [claimed] = await store.job_fetch(["orphan"], uuid.uuid4(), 1, None)  # a dead worker
        assert claimed[0] == job_id
        for _ in range(100):
            if (await app_async.get_job_async(job_id)).state is not JobState.ACTIVE:
                break
            await asyncio.sleep(0.05)
        assert (await app_async.get_job_async(job_id)).state is JobState.RETRY
        assert count(conveyor_dsn, schema, "job_history") > 0  # recovered mid-cleanup
        for _ in range(600):
            if count(conveyor_dsn, schema, "job_history") == 0:
                break
            await asyncio.sleep(0.05)
        assert count(conveyor_dsn, schema, "job_history") == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await store.close()
