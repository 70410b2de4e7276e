"""Counters, not scans (issue 15): queue_stats and the per-minute series read the rollup's small
tables plus the rows finished since its watermark, exact before and after a rollup; and with a
history of 300,000 rows, no stats read scans it (their plans, not their timings)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from conveyor import Conveyor, Fail, FrozenClock, Job, JobState
from conveyor._store.queries import queries
from conveyor._store.worker_store import WorkerStore
from conveyor.config import STATS_TAIL_LIMIT, STATS_WAIT_BOUNDS_MS
from conveyor.events import Events
from conveyor.rollup import StatsRollup
from conveyor.worker.service import ServiceContext

T0 = datetime(2031, 3, 1, 9, 0, 10, tzinfo=UTC)


def fill(app: Conveyor) -> None:
    """Five jobs of queue 'c' finished: 3 completed (one after a retry), 1 failed, 1 cancelled."""
    calls: dict[str, int] = {}

    @app.job("c", retry_limit=1, retry_delay=0)
    def handler(job: Job) -> None:
        calls[job.data["n"]] = calls.get(job.data["n"], 0) + 1
        if job.data["n"] == "flaky" and calls["flaky"] == 1:
            raise ValueError("once")
        if job.data["n"] == "doomed":
            raise Fail("never")

    for n in ("a", "b", "flaky", "doomed"):
        app.send("c", {"n": n})
    app.cancel(app.send("c", {"n": "cancelled"}, start_after=3600))
    app.drain()


def roll(app: Conveyor, rollup: StatsRollup, expected: int = 0) -> int:
    """Run the rollup as its leader would, until at least ``expected`` jobs are counted (a
    transaction of another test that is open meanwhile holds the watermark back until it
    ends); how many were counted."""

    async def passes() -> int:
        store = WorkerStore(app._stores.dsn, app.schema, min_size=0, max_size=1)
        context = ServiceContext(store, uuid.uuid4(), Events(), lambda: None)
        total = 0
        try:
            for _ in range(100):
                total += await rollup.roll(context)
                if total >= expected:
                    break
                await asyncio.sleep(0.1)
        finally:
            await store.close()
        return total

    return asyncio.run(passes())


def counts(app: Conveyor) -> dict[JobState, int]:
    return app.queue_stats("c").counts


def test_stats_are_exact_before_and_after_the_rollup_and_never_count_twice(
    app: Conveyor,
) -> None:
    fill(app)
    expected = {JobState.COMPLETED: 3, JobState.FAILED: 1, JobState.CANCELLED: 1}
    before = counts(app)
    assert {s: before[s] for s in expected} == expected
    minute = app.queue_series("c", minutes=1)[0]
    assert (minute.completed, minute.failed, minute.cancelled, minute.retried) == (3, 1, 1, 1)

    rollup = StatsRollup(lag=0, hold=0)
    assert roll(app, rollup, 5) == 5
    assert roll(app, rollup) == 0  # caught up: nothing counted again
    after = counts(app)
    assert {s: after[s] for s in expected} == expected
    minute = app.queue_series("c", minutes=1)[0]
    assert (minute.completed, minute.failed, minute.cancelled, minute.retried) == (3, 1, 1, 1)
    with psycopg.connect(app._stores.dsn) as conn:
        total = conn.execute(
            f"SELECT completed, failed, cancelled, retried FROM {app.schema}.stats_total "
            "WHERE queue = 'c'"
        ).fetchone()
    assert total == (3, 1, 1, 1)  # the rolled-up totals, which the reads then add nothing to


@pytest.mark.parametrize("path", ["common", "general"])
def test_jobs_that_keep_no_history_are_counted_too(
    app: Conveyor, conveyor_dsn: str, path: str
) -> None:
    """A retention-0 job leaves no row: its ack writes one row for its whole batch, which the
    reads count before the rollup and the rollup counts (and deletes) once. Both paths of the
    ack: the common batch, and the general one (taken while a wait_for is registered)."""
    if path == "general":
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {app.schema}.waiter (id, expires_at) "
                "VALUES (gen_random_uuid(), now() + interval '1 hour')"
            )
    app.create_queue("fleeting", retention=0)
    app.job("fleeting", lambda job: None)
    app.job("kept", lambda job: None)
    app.send_batch([("fleeting", {"i": i}) for i in range(20)])
    app.send("kept", {})
    assert app.drain() == 21

    def unkept() -> tuple[int, int]:
        with psycopg.connect(conveyor_dsn) as conn:
            row = conn.execute(
                f"SELECT count(*), coalesce(sum(cardinality(queue)), 0) "
                f"FROM {app.schema}.stats_unkept"
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    batches, jobs = unkept()
    assert jobs == 20 and batches < 20  # a row per ack batch, not per job

    def exact() -> None:
        assert app.queue_stats("fleeting").counts[JobState.COMPLETED] == 20
        assert app.queue_stats("kept").counts[JobState.COMPLETED] == 1
        # Two minutes: the drain and this read may fall either side of a minute's turn.
        assert sum(m.completed for m in app.queue_series("fleeting", minutes=2)) == 20

    exact()
    rollup = StatsRollup(lag=0, hold=0)
    assert roll(app, rollup, 21) == 21
    assert roll(app, rollup) == 0
    exact()
    assert unkept() == (0, 0)


def test_an_open_transaction_holds_the_watermark_back(app: Conveyor, conveyor_dsn: str) -> None:
    """An ack stamps finished_at with its transaction's start and may commit later: the rollup
    counts nothing at or after the start of a transaction still open (for up to ``hold``
    seconds), so it never moves past a row that has yet to appear."""

    @app.job("held")
    def handler(job: Job) -> None:
        pass

    with psycopg.connect(conveyor_dsn) as other:
        other.execute("SELECT 1")  # a transaction opened before the job finishes
        app.send("held", {})
        app.drain()
        assert roll(app, StatsRollup(lag=0, hold=60)) == 0
        # The read adds what is not rolled up yet.
        assert app.queue_stats("held").counts[JobState.COMPLETED] == 1
    assert roll(app, StatsRollup(lag=0, hold=60), 1) == 1
    assert app.queue_stats("held").counts[JobState.COMPLETED] == 1


def test_the_dead_letters_count_follows_a_retry_of_the_dead(app: Conveyor) -> None:
    fill(app)
    dead = app.list_dead("c")[0]
    app.retry_dead(dead.id)
    assert counts(app)[JobState.FAILED] == 0


def test_a_deleted_queue_starts_its_counts_again(app: Conveyor) -> None:
    fill(app)
    roll(app, StatsRollup(lag=0, hold=0), 5)
    app.delete_queue("c")
    app.create_queue("c")
    assert sum(counts(app).values()) == 0
    assert app.queue_series("c", minutes=5)[-1].completed == 0


def test_a_deleted_queue_takes_its_uncounted_jobs_without_history_along(app: Conveyor) -> None:
    """Jobs of two queues that keep no history, acknowledged in one batch, not rolled up yet:
    deleting one queue forgets its jobs and keeps the other's counted."""
    for name in ("gone", "stays"):
        app.create_queue(name, retention=0)
        app.job(name, lambda job: None)
    app.send_batch([("gone", {}), ("stays", {})] * 5)
    assert app.drain() == 10
    app.delete_queue("gone")
    app.create_queue("gone")
    assert app.queue_stats("gone").counts[JobState.COMPLETED] == 0
    assert app.queue_stats("stays").counts[JobState.COMPLETED] == 5
    assert roll(app, StatsRollup(lag=0, hold=0), 5) == 5
    assert app.queue_stats("gone").counts[JobState.COMPLETED] == 0
    assert app.queue_stats("stays").counts[JobState.COMPLETED] == 5


def test_the_series_has_every_minute_with_waits_retries_and_backlog(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    clock = FrozenClock(T0)
    with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:

        @app.job("w")
        def handler(job: Job) -> None:
            pass

        # Twenty jobs that waited 1 s, one that waited 60 s, all started at T0 + 60 s.
        for _ in range(20):
            app.send("w", {}, start_after=59)
        app.send("w", {})
        clock.advance(60)
        app.drain()
        app.send("w", {})  # waiting, runnable: the backlog
        store = WorkerStore(conveyor_dsn, conveyor_schema, min_size=0, max_size=1)

        async def sample() -> None:
            try:
                await store.stats_sample_backlog(clock())
            finally:
                await store.close()

        asyncio.run(sample())
        series = app.queue_series("w", minutes=3)
        everything = app.queue_series(minutes=3)
    assert [m.minute for m in series] == [
        T0.replace(second=0) + timedelta(minutes=i) for i in (-1, 0, 1)
    ]
    assert [m.completed for m in series] == [0, 0, 21]
    assert [m.backlog for m in series] == [None, None, 1]
    last = series[-1]
    assert last.wait_p50_ms is not None and last.wait_p95_ms is not None
    assert 1000 <= last.wait_p50_ms <= 1500  # the 1 s bucket
    assert 1000 <= last.wait_p95_ms <= 1500  # 20 of 21 jobs waited 1 s
    assert series[0].wait_p50_ms is None
    assert everything == series  # one queue holds every job


HISTORY = 100_000
# Seconds between two finish times: the history spans the last 30 days.
SPACING = 30 * 86400 / HISTORY


@pytest.fixture
def big_history(app: Conveyor, conveyor_dsn: str) -> Iterator[Conveyor]:
    """HISTORY finished jobs over the last 30 days in three queues, most completed, 1% dead."""
    s = app.schema
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {s}.queue (name) VALUES ('q0'), ('q1'), ('q2')")
        # Into the tables under the job_history view, in one statement each (the view's
        # trigger would write them a row at a time).
        for table, state, extra, drop_at in (
            ("job_archive", "completed", ", drop_at", ", r.drop_at"),
            ("job_dead", "failed", "", ""),
        ):
            conn.execute(
                f"""INSERT INTO {s}.{table}
                    (id, queue, state, run_at, attempt, retry_limit, retry_delay, retry_backoff,
                     expire_in, retention, created_at, started_at, finished_at{extra})
                    SELECT gen_random_uuid(), 'q' || (g %% 3), %(state)s,
                           f - interval '2 seconds', 1, 0, 1, 'fixed', 60, 86400 * 60,
                           f - interval '3 seconds', f - interval '1 second', f{drop_at}
                    FROM generate_series(1, %(n)s) g,
                         LATERAL (SELECT now() - make_interval(secs => g * %(spacing)s) AS f) x,
                         (SELECT {s}.archive_drop_at(now() + interval '60 days', now())
                             AS drop_at) r
                    WHERE (g %% 100 = 0) = (%(state)s::text = 'failed')""",
                {"state": state, "n": HISTORY, "spacing": SPACING},
            )
            conn.execute(f"ANALYZE {s}.{table}")
    yield app


def plan(conn: psycopg.Connection, sql: str, params: dict[str, object]) -> str:
    found = conn.execute("EXPLAIN (ANALYZE, FORMAT TEXT) " + sql, params).fetchall()
    return "\n".join(r[0] for r in found)


# A plan node over the tables under the job_history view: an archive partition or job_dead.
ON_HISTORY = re.compile(r" on (job_archive\w*|job_dead) ")


def history_seq_scans(text: str) -> list[str]:
    """The plan's sequential scans of the archive that read a row (returned or filtered out):
    an empty partition is scanned for nothing, which costs nothing. job_dead holds only the
    dead letters, which the counts read once (rows_read_from_history bounds them)."""
    lines = text.splitlines()
    found = []
    for at, line in enumerate(lines):
        if "Seq Scan on job_archive" not in line:
            continue
        actual = line.split("actual time=")[1]
        read = int(actual.split("rows=")[1].split()[0])
        for detail in lines[at + 1 :]:
            if "->" in detail:
                break
            if "Rows Removed by Filter:" in detail:
                read += int(detail.split("Rows Removed by Filter:")[1])
        if read:
            found.append(line)
    return found


def rows_read_from_history(text: str) -> int:
    """The rows every node over the history's tables returned (rows times loops), from
    EXPLAIN ANALYZE."""
    total = 0
    for line in text.splitlines():
        if ON_HISTORY.search(line) and "actual time=" in line:
            actual = line.split("actual time=")[1]
            rows = int(actual.split("rows=")[1].split()[0])
            loops = int(actual.split("loops=")[1].split(")")[0])
            total += rows * loops
    return total


def test_stats_reads_never_scan_a_large_history(big_history: Conveyor, conveyor_dsn: str) -> None:
    app = big_history
    # The first pass after a migration counts the existing history, a chunk at a time.
    rollup = StatsRollup(lag=0, hold=0, chunk=100_000)
    assert roll(app, rollup, HISTORY) == HISTORY
    stats = {s.queue: s for s in app.queue_stats()}
    assert sum(s.counts[JobState.COMPLETED] for s in stats.values()) == HISTORY * 99 // 100
    assert sum(s.counts[JobState.FAILED] for s in stats.values()) == HISTORY // 100
    named = queries(app.schema)
    counted = {"bounds": list(STATS_WAIT_BOUNDS_MS), "tail": STATS_TAIL_LIMIT, "now": None}
    reads = {
        "queue_stats": {"name": None},
        "queue_live_counts": {},
        "stats_series": {"queue": None, "minutes": 60},
    }
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        for name, params in reads.items():
            text = plan(conn, named[name].sql, {**counted, **params})
            assert not history_seq_scans(text), text
            assert "JIT:" not in text, text  # compiling would cost more than the read
            # Only the dead letters (1%) are counted, each once; nothing else of the history.
            assert rows_read_from_history(text) <= HISTORY // 100 + 10, text


def test_pages_of_jobs_follow_each_other_by_keyset(app: Conveyor) -> None:
    sent = [app.send("p", {"n": n}) for n in range(7)]
    first = app.list_jobs("p", limit=3)
    assert [j.id for j in first] == sent[:-4:-1]
    app.send("p", {"n": "late"})  # a newer job does not shift the next pages
    second = app.list_jobs("p", limit=3, after=first[-1])
    third = app.list_jobs("p", limit=3, after=(second[-1].created_at, str(second[-1].id)))
    assert [j.id for j in second + third] == sent[-4::-1]
    oldest = app.list_jobs("p", limit=2, order="asc")
    assert [j.id for j in app.list_jobs("p", limit=2, order="asc", after=oldest[-1])] == sent[2:4]


def test_finished_jobs_older_than_the_window_need_an_explicit_since(
    app: Conveyor, conveyor_dsn: str
) -> None:
    job_id = app.send("old", {})
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(
            f"""WITH gone AS (DELETE FROM {app.schema}.job RETURNING *)
                INSERT INTO {app.schema}.job_history
                SELECT id, queue, 'completed', data, priority, run_at, attempt, retry_limit,
                       retry_delay, retry_backoff, retry_delay_max, expire_in, retention,
                       singleton_key, singleton_seconds, unique_key, dead_letter, group_key,
                       depends_on, NULL, created_at - interval '2 days', NULL,
                       now() - interval '2 days', NULL, errors, progress, queued_key
                FROM gone"""
        )
    assert app.list_jobs("old") == []
    assert [j.id for j in app.list_jobs("old", since=timedelta(days=3))] == [job_id]
    assert app.get_job(job_id).state is JobState.COMPLETED


def test_a_page_of_jobs_reads_a_window_of_a_large_history(
    big_history: Conveyor, conveyor_dsn: str
) -> None:
    app = big_history
    newest = app.list_jobs(limit=50)
    pages = newest + app.list_jobs(limit=50, after=newest[-1])
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        expected = conn.execute(
            f"SELECT id FROM {app.schema}.job_history ORDER BY created_at DESC, id DESC LIMIT 100"
        ).fetchall()
        assert [j.id for j in pages] == [r[0] for r in expected]
        params: dict[str, object] = {
            "queue": None, "states": None, "limit": 50, "offset": 0, "descending": True,
            "since_at": None, "since_seconds": None, "search": None, "after_at": None,
            "after_id": None, "now": None, "floor": None,
        }  # fmt: skip
        for window in (60, 3600, 86400):
            text = plan(conn, queries(app.schema)["job_list"].sql, {**params, "window": window})
            assert not history_seq_scans(text), text
            # The rows finished in the window (one every SPACING s), read by the index.
            assert rows_read_from_history(text) <= window / SPACING + 2, text
        # A window by count: the finish time of the 100th newest job, found among the newest
        # 5,000 along the indexes, then a page that reads those 100 rows and no more.
        named = queries(app.schema)
        reach = {**params, "window": 86400, "skip": 99, "scan": 5000}
        text = plan(conn, named["job_list_floor"].sql, reach)
        assert not history_seq_scans(text), text
        assert rows_read_from_history(text) <= 100 + 2, text
        [(floor,)] = conn.execute(named["job_list_floor"].sql, reach).fetchall()
        text = plan(conn, named["job_list"].sql, {**params, "window": 86400, "floor": floor})
        assert rows_read_from_history(text) <= 100 + 2, text
