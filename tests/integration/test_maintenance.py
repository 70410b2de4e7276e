"""Maintenance against a real PostgreSQL: finished jobs leave after their own retention, in whole
partitions of the history that are dropped; dead letters after the app's dead_retention, closed
throttle windows and old tick rows go, in chunks; only on the worker holding the maintenance
lease. Time moves by the app's clock."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from conveyor import Conveyor, Fail, FrozenClock, Job, JobState
from conveyor._store.worker_store import WorkerStore
from conveyor.errors import InvalidOption, JobNotFound
from conveyor.events import Events
from conveyor.maintenance import Maintenance
from conveyor.worker.service import ServiceContext

T0 = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)
NOTHING = {"legacy_moved": 0, "dead_letters": 0, "throttle": 0, "schedule_ticks": 0}
PASS = {**NOTHING, "vacuumed": 0}
# A partition is one minute wide and dropped a minute after it ended.
PARTITION_SLACK = 125


def done(counts: dict[str, int]) -> dict[str, int]:
    """A pass's counts but the partitions it created (those depend on the hour)."""
    return {k: v for k, v in counts.items() if k != "partitions_created"}


def rows(counts: dict[str, int]) -> dict[str, int]:
    """A pass's counts of rows deleted (other tests on this schema leave partitions behind,
    which a clock in another year drops)."""
    return {k: v for k, v in counts.items() if not k.startswith("partitions_")}


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
    """``n`` finished jobs of queue 'seeded', kept for 60 s after ``finished``: dead letters
    for state 'failed', else archived in the partition their clock gives them (created for
    the occasion, as the leader would have at the time)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {schema}.queue (name) VALUES ('seeded') ON CONFLICT DO NOTHING")
        columns = (
            "id, queue, state, run_at, retry_limit, retry_delay, retry_backoff, expire_in, "
            "retention, created_at, finished_at"
        )
        values = (
            "gen_random_uuid(), 'seeded', %(state)s, %(at)s, 0, 1, 'fixed', 60, 60, %(at)s, %(at)s"
        )
        params = {"state": state, "at": finished, "n": n}
        if state == "failed":
            conn.execute(
                f"INSERT INTO {schema}.job_dead ({columns}) "
                f"SELECT {values} FROM generate_series(1, %(n)s)",
                params,
            )
            return
        conn.execute(f"SELECT {schema}.archive_extend(60, %(at)s)", params)
        conn.execute(
            f"INSERT INTO {schema}.job_archive ({columns}, drop_at) SELECT {values}, "
            f"{schema}.archive_drop_at(%(at)s + interval '60 s', %(at)s) "
            "FROM generate_series(1, %(n)s)",
            params,
        )


def count(dsn: str, schema: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()
    assert row is not None
    return int(row[0])


def test_history_leaves_by_whole_partitions_once_they_ended(
    timed: Conveyor, clock: FrozenClock, conveyor_dsn: str
) -> None:
    seed_history(conveyor_dsn, timed.schema, 2500, "completed", T0 - timedelta(seconds=200))
    seed_history(conveyor_dsn, timed.schema, 7, "completed", T0 - timedelta(seconds=59))
    counts = timed.maintain(chunk=1000)
    assert counts["partitions_dropped"] >= 1 and counts["partitions_created"] > 0
    assert count(conveyor_dsn, timed.schema, "job_history") == 7
    assert done(timed.maintain(chunk=1000)) == {**PASS, "partitions_dropped": 0}
    clock.advance(PARTITION_SLACK)
    assert timed.maintain(chunk=3)["partitions_dropped"] >= 1
    assert count(conveyor_dsn, timed.schema, "job_history") == 0
    with psycopg.connect(conveyor_dsn) as conn:  # the rows went with their tables
        gone = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = %s AND c.relname LIKE 'job_archive_{T0:%Y%m%d}_08%%'",
            (timed.schema,),
        ).fetchone()
    assert gone == (0,)


def test_each_job_is_kept_for_its_own_retention(timed: Conveyor, clock: FrozenClock) -> None:
    timed.maintain()  # the runway from T0 on
    timed.job("kept", lambda job: job.data)
    short = timed.send("kept", 1, retention=60)
    cancelled = timed.send("kept", 2, retention=60, start_after=10)
    timed.cancel(cancelled)
    long = timed.send("kept", 3, retention=3600)
    assert timed.drain() == 2
    clock.advance(59)
    assert timed.maintain()["partitions_dropped"] == 0
    clock.advance(PARTITION_SLACK)
    assert timed.maintain()["partitions_dropped"] >= 1
    for gone in (short, cancelled):
        with pytest.raises(JobNotFound):
            timed.get_job(gone)
    assert timed.get_job(long).state is JobState.COMPLETED
    clock.advance(3600 - PARTITION_SLACK)
    timed.maintain()
    assert timed.get_job(long).state is JobState.COMPLETED  # kept at least its retention
    clock.advance(PARTITION_SLACK + 60)
    timed.maintain()
    with pytest.raises(JobNotFound):
        timed.get_job(long)


def test_the_runway_grows_ten_minutes_at_a_time(timed: Conveyor, clock: FrozenClock) -> None:
    """Attaching a partition makes every writer of the history plan its acknowledgement again:
    the leader creates what the next ten minutes will need at once, and then nothing until it
    runs short, instead of a partition every minute."""
    clock.advance(timedelta(days=3, seconds=17))  # clear of the partitions other tests leave
    assert timed.maintain()["partitions_created"] > 10
    for _ in range(10):
        clock.advance(60)
        assert timed.maintain()["partitions_created"] == 0
    clock.advance(60)
    assert timed.maintain()["partitions_created"] > 0


def test_the_layout_ahead_holds_every_instant_the_layout_asks_for_meanwhile(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    """What the runway creates ahead at T is every partition archive_layout gives at any time
    from T to T + 10 minutes, for retentions short and long; with no lead, the layout itself."""
    s = conveyor_schema
    with psycopg.connect(conveyor_dsn) as conn:
        found = conn.execute(
            f"""
            WITH spans AS (
                SELECT make_interval(secs => h + 60) AS span,
                       timestamptz '2031-03-01 09:00:00+00' + k * interval '97 seconds' AS t0
                FROM unnest(ARRAY[0, 60, 120, 600, 3600, 86400, 604800, 3456000]) AS h,
                     generate_series(0, 12) AS k
            )
            SELECT
                (SELECT count(*) FROM spans, generate_series(0, 600, 7) AS j
                 WHERE EXISTS (
                     SELECT l FROM {s}.archive_layout(
                         t0 + j * interval '1 second', t0 + j * interval '1 second' + span) l
                     EXCEPT
                     SELECT {s}.archive_layout_ahead(t0, t0 + span, interval '10 minutes'))),
                (SELECT count(*) FROM spans
                 WHERE ARRAY(SELECT l FROM {s}.archive_layout(t0, t0 + span) l ORDER BY l)
                       <> ARRAY(SELECT l FROM {s}.archive_layout_ahead(t0, t0 + span, '0') l
                                ORDER BY l))
            """
        ).fetchone()
    assert found == (0, 0)  # (instants missed ahead, layouts that differ with no lead)


def test_partitions_reach_as_far_as_the_longest_retention_in_use(
    timed: Conveyor, clock: FrozenClock, conveyor_dsn: str
) -> None:
    timed.create_queue("kept-long", retention=timedelta(days=40))
    timed.maintain()
    with psycopg.connect(conveyor_dsn) as conn:
        [(reach,)] = conn.execute(f"SELECT max(hi) FROM {timed.schema}.archive_partition")
    assert T0 + timedelta(days=40) <= reach <= T0 + timedelta(days=40 + 29)
    # A job's own retention beyond the runway: kept apart, never refused nor dropped early,
    # and shown by doctor until the next cleanup extends the runway and moves it there.
    timed.create_queue("hooked")
    timed.job("hooked", lambda job: None)
    timed.job("far", lambda job: None)
    far = timed.send("far", {}, retention=timedelta(days=3000), on_complete="hooked")
    timed.drain()
    assert timed.get_job(far).state is JobState.COMPLETED

    def placed() -> tuple[bool, str]:
        with psycopg.connect(conveyor_dsn) as conn:
            [(beyond, table)] = conn.execute(
                f"SELECT drop_at = 'infinity', tableoid::regclass::text "
                f"FROM {timed.schema}.job_archive WHERE id = %s",
                (far,),
            )
        return beyond, table.rsplit(".", 1)[-1]

    def hooks_run() -> int:
        with psycopg.connect(conveyor_dsn) as conn:
            [(n,)] = conn.execute(
                f"SELECT count(*) FROM {timed.schema}.job_history WHERE queue = 'hooked'"
            )
        return int(n)

    assert placed() == (True, "job_archive_beyond")
    assert hooks_run() == 1
    [warning] = [
        f.message for f in timed.diagnose() if f.check == "history" and f.severity == "warning"
    ]
    assert warning.startswith("1 finished jobs are kept longer than"), warning
    assert timed.maintain()["partitions_created"] > 0
    beyond, table = placed()
    assert not beyond and table.startswith("job_archive_2")
    with psycopg.connect(conveyor_dsn) as conn:
        [(drop_at,)] = conn.execute(
            f"SELECT drop_at FROM {timed.schema}.job_archive WHERE id = %s", (far,)
        )
    assert drop_at >= T0 + timedelta(days=3000)
    assert [f.severity for f in timed.diagnose() if f.check == "history"] == ["ok"]
    timed.drain()
    assert hooks_run() == 1  # moving it fired its completion hook no second time


def test_a_detach_left_pending_is_finalized_and_dropped(
    timed: Conveyor, clock: FrozenClock, conveyor_dsn: str
) -> None:
    seed_history(conveyor_dsn, timed.schema, 3, "completed", T0 - timedelta(seconds=300))
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        [(name,)] = conn.execute(
            f"SELECT p.name FROM {timed.schema}.archive_partition p "
            f"JOIN {timed.schema}.job_archive a ON a.drop_at >= p.lo AND a.drop_at < p.hi "
            "GROUP BY p.name"
        )
        # What an interrupted DETACH ... CONCURRENTLY leaves, and a plain detach: gone from
        # the parent, still listed.
        conn.execute(
            f"ALTER TABLE {timed.schema}.job_archive DETACH PARTITION {timed.schema}.{name}"
        )
    assert count(conveyor_dsn, timed.schema, "job_history") == 0
    assert timed.maintain()["partitions_dropped"] >= 1
    with psycopg.connect(conveyor_dsn) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f"{timed.schema}.{name}",)).fetchone() == (
            None,
        )


def test_dead_letters_are_kept_until_the_dead_retention(
    timed: Conveyor, clock: FrozenClock
) -> None:
    def fail(job: Job) -> None:
        raise Fail("no")

    timed.job("doomed", fail)
    dead = timed.send("doomed", {}, retention=60)
    timed.drain()
    clock.advance(3599)
    assert rows(timed.maintain()) == PASS  # past its retention, but a dead letter
    assert timed.get_job(dead).state is JobState.FAILED
    clock.advance(2)
    assert rows(timed.maintain()) == {**PASS, "dead_letters": 1}
    with pytest.raises(JobNotFound):
        timed.get_job(dead)


def test_dead_letters_go_in_chunks_too(
    timed: Conveyor, clock: FrozenClock, conveyor_dsn: str
) -> None:
    seed_history(conveyor_dsn, timed.schema, 25, "failed", T0 - timedelta(hours=2))
    seed_history(conveyor_dsn, timed.schema, 4, "failed", T0 - timedelta(minutes=59))
    assert rows(timed.maintain(chunk=10)) == {**PASS, "dead_letters": 25}
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


def test_a_dropped_job_takes_its_completion_hook_along(
    timed: Conveyor, clock: FrozenClock, conveyor_dsn: str
) -> None:
    seed_history(conveyor_dsn, timed.schema, 3, "completed", T0 - timedelta(seconds=300))
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {timed.schema}.job_hook (job_id, on_complete) "
            f"SELECT id, 'hooks' FROM {timed.schema}.job_history"
        )
        conn.execute(f"INSERT INTO {timed.schema}.job_hook VALUES (gen_random_uuid(), 'other')")
    assert timed.maintain()["partitions_dropped"] >= 1
    assert count(conveyor_dsn, timed.schema, "job_hook") == 1


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
        for _ in range(400):
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
        assert done(await Maintenance(chunk=7).clean(context, stop)) == {
            **NOTHING, "partitions_dropped": 0
        }  # fmt: skip
        assert count(conveyor_dsn, conveyor_schema, "job_history") == 30
        counts = await Maintenance(chunk=7).clean(context, asyncio.Event())
        assert counts["partitions_dropped"] > 0
        assert count(conveyor_dsn, conveyor_schema, "job_history") == 0
    finally:
        await store.close()


async def test_dead_tuples_that_pile_up_are_vacuumed(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    seed_history(
        conveyor_dsn, conveyor_schema, 1500, "failed", datetime.now(UTC) - timedelta(days=30)
    )
    store = WorkerStore(conveyor_dsn, conveyor_schema, min_size=0, max_size=1)
    try:
        assert await store.vacuum_churned(1000, 0.1) == []  # no dead tuples yet
        counts = await store.maintain(
            dead_retention=3600, default_retention=3600, tick_keep=3600, chunk=1000, now=None,
            analyze=False,
        )  # fmt: skip
        assert counts["dead_letters"] == 1500
        before = {t: await _stamps(conveyor_dsn, conveyor_schema, t) for t in ("job", "job_dead")}
        vacuumed: list[str] = []
        for _ in range(50):  # the statistics of the delete arrive within a second or so
            vacuumed = await store.vacuum_churned(1000, 0.1)
            if vacuumed:
                break
            await asyncio.sleep(0.1)
        assert vacuumed == ["job_dead"]
        assert await store.vacuum_churned(100_000, 0.1) == []  # under the count
        # A plain VACUUM: an ANALYZE would hold a snapshot that stops claimed rows from being
        # pruned while it runs, every few seconds under load. The analyze comes with a
        # maintenance pass that asks for it.
        vacuumed_at, analyzed_at = await _stamps(
            conveyor_dsn, conveyor_schema, "job_dead", changed=before["job_dead"], column=0
        )
        assert vacuumed_at != before["job_dead"][0]
        assert analyzed_at == before["job_dead"][1]
        await store.maintain(
            dead_retention=3600, default_retention=3600, tick_keep=3600, chunk=1000, now=None,
            analyze=True,
        )  # fmt: skip
        for table in ("job", "job_dead"):
            stamps = await _stamps(
                conveyor_dsn, conveyor_schema, table, changed=before[table], column=1
            )
            assert stamps[1] != before[table][1], table
    finally:
        await store.close()


Stamps = tuple[datetime | None, datetime | None]  # last_vacuum, last_analyze


async def _stamps(
    dsn: str, schema: str, table: str, changed: Stamps | None = None, column: int = 0
) -> Stamps:
    """When the table was last vacuumed and analyzed by hand; with ``changed``, waits (up to 5 s)
    for the statistics to show ``column`` of it changed."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(50):
            cur = await conn.execute(
                "SELECT last_vacuum, last_analyze FROM pg_stat_user_tables"
                " WHERE schemaname = %s AND relname = %s",
                (schema, table),
            )
            row = await cur.fetchone()
            assert row is not None
            if changed is None or row[column] != changed[column]:
                return (row[0], row[1])
            await asyncio.sleep(0.1)
    return (row[0], row[1])


async def test_a_failing_cleanup_is_reported_and_recovery_goes_on(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    async with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        await app.migrate_async()
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
            # Recorded for doctor too.
            for _ in range(100):
                if count(conveyor_dsn, scratch_schema, "archive_status WHERE failure IS NOT NULL"):
                    break
                await asyncio.sleep(0.05)
            findings = [f for f in await app.diagnose_async() if f.check == "history"]
            assert any(
                "upkeep failed" in f.message and "throttle" in f.message for f in findings
            ), findings
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


# Enough rows, deleted one per statement, that the cleanup outlasts the recovery by seconds
# (it deletes about 75 rows a second on a loaded 2-core machine, a few hundred on a quiet one).
SLOW_ROWS = 600


async def test_a_long_cleanup_goes_on_over_several_loops_and_never_delays_recovery(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    schema = app_async.schema
    seed_history(conveyor_dsn, schema, SLOW_ROWS, "failed", datetime.now(UTC) - timedelta(days=30))
    store = WorkerStore(conveyor_dsn, schema, min_size=0, max_size=2)
    context = ServiceContext(
        store=store, worker_id=uuid.uuid4(), events=Events(), clock=lambda: None
    )
    # One row per statement: the pass takes seconds; each loop gives it 0.2 s at most, and a
    # cleanup_interval this long means only the cut-short passes going on can finish it.
    service = Maintenance(stale_after=1, interval=0.2, cleanup_interval=3600, chunk=1, pace=0)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(context, stop))
    try:
        for _ in range(100):
            if count(conveyor_dsn, schema, "job_history") < SLOW_ROWS:
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
        for _ in range(1200):  # ~50 rows a second on a loaded 2-core machine
            if count(conveyor_dsn, schema, "job_history") == 0:
                break
            await asyncio.sleep(0.05)
        assert count(conveyor_dsn, schema, "job_history") == 0
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await store.close()


async def test_vacuum_leaves_the_live_table_s_empty_pages_in_place(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    """Truncating the live table would take an ACCESS EXCLUSIVE lock that every claim waits for
    (and cancel reads on a standby): its emptied pages stay, for the next jobs."""
    async with Conveyor(conveyor_dsn, schema=conveyor_schema) as app:
        await app.send_batch_async([("q", {"i": i, "pad": "x" * 200}) for i in range(3000)])
    store = WorkerStore(conveyor_dsn, conveyor_schema, min_size=0, max_size=1)
    size = f"SELECT pg_relation_size('\"{conveyor_schema}\".job')"
    try:
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            filled = conn.execute(size).fetchone()
            assert filled is not None and filled[0] > 8192 * 10
            conn.execute(f'DELETE FROM "{conveyor_schema}".job')
            # Without the table's setting, the first VACUUM after the deleted rows are dead to
            # every snapshot cuts the file to nothing; other tests' snapshots may delay that.
            for _ in range(5):
                await store.maintain_vacuum_job()
                assert conn.execute(size).fetchone() == filled
                await asyncio.sleep(0.2)
            options = conn.execute(
                "SELECT reloptions FROM pg_class WHERE oid = %s::regclass",
                (f'"{conveyor_schema}".job',),
            ).fetchone()
            assert options is not None and "vacuum_truncate=false" in options[0]
    finally:
        await store.close()
