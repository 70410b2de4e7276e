"""Fair share across tenants (issue 16, item 4): a fair queue's fetch serves the jobs' fair_key
values in turn, so one key's flood never holds back another key's job past the next fetch; the
claim stays exactly-once, and the queue's limits, groups and pause still hold."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from conveyor import Conveyor, InvalidOption, Job, JobState
from conveyor._store.queries import queries


def fetch(conn: psycopg.Connection[Any], schema: str, queue: str, limit: int) -> list[Any]:
    """One claim, as a worker's fetch makes it: the claimed jobs' rows, in claim order."""
    rows = conn.execute(
        queries(schema)["job_fetch"].sql,
        {"queues": [queue], "worker": uuid.uuid4(), "limit": limit, "now": None},
    ).fetchall()
    conn.commit()
    return rows


def flood(app: Conveyor, queue: str, key: str | None, count: int) -> list[uuid.UUID]:
    options: dict[str, Any] = {} if key is None else {"fair_key": key}
    return app.send_batch([(queue, {"key": key, "n": n}, options) for n in range(count)])


def keys_of(rows: list[Any]) -> list[str]:
    return [r["data"]["key"] for r in rows]


def test_one_key_with_a_thousand_queued_jobs_does_not_hold_back_another_keys_job(
    app: Conveyor, conveyor_dsn: str
) -> None:
    app.create_queue("tenants", fair=True)
    flood(app, "tenants", "A", 1000)
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        assert keys_of(fetch(conn, app.schema, "tenants", 10)) == ["A"] * 10
        b = app.send("tenants", {"key": "B"}, fair_key="B")
        claimed = fetch(conn, app.schema, "tenants", 10)
        assert [r["id"] for r in claimed].count(b) == 1  # in the very next fetch
        assert sorted(keys_of(claimed)) == ["A"] * 9 + ["B"]
        assert claimed[:2] == sorted(claimed[:2], key=lambda r: r["data"]["key"])  # round one
        # A job sent without a key is a key of its own ('') and gets its turn as well.
        n = app.send("tenants", {"key": None})
        assert app.get_job(n).fair_key == ""
        assert n in [r["id"] for r in fetch(conn, app.schema, "tenants", 3)]


def test_the_same_queue_unfair_serves_the_flood_first(app: Conveyor, conveyor_dsn: str) -> None:
    app.create_queue("tenants")
    flood(app, "tenants", "A", 100)
    b = app.send("tenants", {"key": "B"}, fair_key="B")
    assert app.get_job(b).fair_key == "B"  # kept: the queue may be made fair later
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        assert b not in [r["id"] for r in fetch(conn, app.schema, "tenants", 10)]
        app.update_queue("tenants", fair=True)
        assert b in [r["id"] for r in fetch(conn, app.schema, "tenants", 10)]


def test_priority_orders_a_keys_jobs_and_the_turn_goes_across_keys(
    app: Conveyor, conveyor_dsn: str
) -> None:
    app.create_queue("tenants", fair=True)
    low = app.send("tenants", {"key": "A"}, fair_key="A", priority=0)
    high = app.send("tenants", {"key": "A"}, fair_key="A", priority=9)
    app.send("tenants", {"key": "B"}, fair_key="B", priority=-5)
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        first = fetch(conn, app.schema, "tenants", 2)
        assert {r["data"]["key"] for r in first} == {"A", "B"}
        assert high in [r["id"] for r in first]
        assert [r["id"] for r in fetch(conn, app.schema, "tenants", 2)] == [low]


def test_one_key_is_claimed_in_priority_then_run_time_order_with_its_meta(
    app: Conveyor, conveyor_dsn: str
) -> None:
    """The claim of a queue whose due jobs all have one key (0020's one-statement path)."""
    app.create_queue("tenants", fair=True)
    send = f"SELECT {app.schema}.send('tenants', '{{}}', %s)"
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        ids = []
        for priority, meta in [(0, None), (5, {"x": 1}), (0, {"y": 2}), (9, None)]:
            options: dict[str, Any] = {"fair_key": "A", "priority": priority}
            if meta is not None:
                options["meta"] = meta
            row = conn.execute(send, [psycopg.types.json.Jsonb(options)]).fetchone()
            assert row is not None
            ids.append(row["send"])
            conn.commit()  # one transaction each: run_at, now() of each, orders equal priorities
        claimed = fetch(conn, app.schema, "tenants", 3)
        assert [r["id"] for r in claimed] == [ids[3], ids[1], ids[0]]
        assert [r["result"] for r in claimed] == [  # meta rides in job_fetched.result
            {"fair_key": "A"},
            {"x": 1, "fair_key": "A"},
            {"fair_key": "A"},
        ]
        assert [r["id"] for r in fetch(conn, app.schema, "tenants", 3)] == [ids[2]]
        assert fetch(conn, app.schema, "tenants", 3) == []


def test_more_keys_than_room_are_served_in_turn_across_fetches(
    app: Conveyor, conveyor_dsn: str
) -> None:
    app.create_queue("tenants", fair=True)
    for key in ("k1", "k2", "k3", "k4", "k5"):
        flood(app, "tenants", key, 3)
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        served = [keys_of(fetch(conn, app.schema, "tenants", 2)) for _ in range(5)]
    # Each key once before any key twice, then again in the same order.
    flat = [k for got in served for k in got]
    assert sorted(flat[:5]) == ["k1", "k2", "k3", "k4", "k5"]
    assert flat[5:10] == flat[:5]


def test_making_a_queue_fair_keys_the_jobs_it_holds_without_one(
    app: Conveyor, conveyor_dsn: str
) -> None:
    flood(app, "tenants", None, 50)
    b = app.send("tenants", {"key": "B"}, fair_key="B")
    assert app.update_queue("tenants", fair=True).fair
    assert app.get_queue("tenants").fair and app.list_queues()[0].fair
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        assert b in [r["id"] for r in fetch(conn, app.schema, "tenants", 2)]
    assert not app.update_queue("tenants", fair=False).fair
    assert not app.get_queue("tenants").fair


def test_concurrent_fetchers_claim_every_job_of_a_fair_queue_exactly_once(
    app: Conveyor, conveyor_dsn: str
) -> None:
    app.create_queue("tenants", fair=True)
    sent: list[uuid.UUID] = []
    for key in ("A", "B", "C", None):
        sent += flood(app, "tenants", key, 300 if key == "A" else 50)
    claimed: list[uuid.UUID] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def fetcher() -> None:
        try:
            with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
                while rows := fetch(conn, app.schema, "tenants", 7):
                    with lock:
                        claimed.extend(r["id"] for r in rows)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fetcher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(claimed) == len(sent) == 450
    assert set(claimed) == set(sent)


def test_limits_groups_and_pause_hold_on_a_fair_queue(app: Conveyor, conveyor_dsn: str) -> None:
    app.create_queue("tenants", fair=True, concurrency=3)
    flood(app, "tenants", "A", 10)
    flood(app, "tenants", "B", 10)
    group = [app.send("tenants", {"key": "G"}, fair_key="G", group_key="g") for _ in range(3)]
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        assert len(fetch(conn, app.schema, "tenants", 10)) == 3  # the concurrency limit
        app.update_queue("tenants", concurrency=None)
        got = fetch(conn, app.schema, "tenants", 100)
        assert [r["id"] for r in got if r["id"] in group] == [group[0]]  # one head per group
        assert len(got) == 17 + 1
        app.send("tenants", {"key": "B"}, fair_key="B")
        app.pause_queue("tenants")
        assert fetch(conn, app.schema, "tenants", 10) == []
        app.resume_queue("tenants")
        assert keys_of(fetch(conn, app.schema, "tenants", 10)) == ["B"]


def test_a_worker_runs_a_fair_queue_and_the_handler_sees_the_key(app: Conveyor) -> None:
    app.create_queue("tenants", fair=True)
    seen: list[tuple[str | None, Any]] = []

    @app.job("tenants")
    def handle(job: Job) -> None:
        seen.append((job.fair_key, job.meta))

    app.send("tenants", {"key": "A"}, fair_key="A")
    app.send("tenants", {"key": None})
    assert app.drain() == 2
    assert sorted(seen, key=str) == [("", None), ("A", None)]


@pytest.mark.parametrize("bad", ["", 5, "x" * 256, "a\x00b", True])
def test_a_bad_fair_key_is_refused_and_nothing_is_written(app: Conveyor, bad: object) -> None:
    with pytest.raises(InvalidOption, match="fair_key"):
        app.send("tenants", {}, fair_key=bad)
    with pytest.raises(InvalidOption, match="fair_key"):
        app.send_batch([("tenants", {}, {}), ("tenants", {}, {"fair_key": bad})])
    assert app.list_jobs() == []
    assert app.list_queues() == []


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_a_bad_fair_flag_is_refused_and_nothing_is_written(app: Conveyor, bad: object) -> None:
    if bad is None:  # None clears a field in update_queue; create_queue takes a flag
        app.create_queue("tenants", fair=True)
        assert not app.update_queue("tenants", fair=None).fair
        return
    with pytest.raises(InvalidOption, match="fair"):
        app.create_queue("tenants", fair=bad)
    assert app.list_queues() == []
    app.create_queue("tenants")
    with pytest.raises(InvalidOption, match="fair"):
        app.update_queue("tenants", fair=bad)
    assert not app.get_queue("tenants").fair


def test_sql_send_takes_the_fair_key_option_and_refuses_a_bad_one(
    app: Conveyor, conveyor_dsn: str
) -> None:
    app.create_queue("tenants", fair=True)
    send = f"SELECT {app.schema}.send('tenants', '{{}}', %s)"
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        row = conn.execute(send, [psycopg.types.json.Jsonb({"fair_key": "t-42"})]).fetchone()
        assert row is not None and app.get_job(row[0]).fair_key == "t-42"
        row = conn.execute(send, [psycopg.types.json.Jsonb({})]).fetchone()
        assert row is not None and app.get_job(row[0]).fair_key == ""
        for bad in ({"fair_key": 5}, {"fair_key": ""}, {"fair_key": "x" * 256}):
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="fair_key"):
                conn.execute(send, [psycopg.types.json.Jsonb(bad)])
    assert len(app.list_jobs()) == 2


@pytest.mark.parametrize("fair_at_start", [True, False])
async def test_a_send_to_a_fair_queue_is_claimed_beside_a_fetch_under_way(
    app_async: Conveyor, conveyor_dsn: str, fair_at_start: bool
) -> None:
    """The worker's fetch is held up (here by the lock of another queue's row, which a limited
    queue's claim takes; at full drain, by the tens of ms a big claim takes): a job sent to a
    fair queue meanwhile is claimed by an express fetch of that queue and runs before the fetch
    under way returns. A queue made fair after the worker started is known by its claims."""
    await app_async.create_queue_async("tenants", fair=fair_at_start)
    await app_async.create_queue_async("limited", concurrency=5)
    ran: list[str] = []

    @app_async.job("tenants")
    async def tenant(job: Job) -> None:
        ran.append(job.data["key"])

    @app_async.job("limited")
    async def limited(job: Job) -> None:
        ran.append("limited")

    stop = asyncio.Event()
    task = asyncio.create_task(
        app_async.run_worker_async(stop=stop, concurrency=4, poll_interval=5.0)
    )
    try:
        if not fair_at_start:
            await app_async.update_queue_async("tenants", fair=True)
            await app_async.send_async("tenants", {"key": "A"}, fair_key="A")
            await until(lambda: _true(ran == ["A"]))  # a fair claim: the worker learns it
        lock = f"SELECT FROM {app_async.schema}.queue WHERE name = 'limited' FOR UPDATE"
        with psycopg.connect(conveyor_dsn) as holder:
            holder.execute(lock)
            # The send wakes the worker, whose fetch of both queues then waits for the lock.
            await app_async.send_async("limited", {})
            await until_active(app_async, holder, conveyor_dsn)
            b = await app_async.send_async("tenants", {"key": "B"}, fair_key="B")
            # Ran: its outcome may wait, since acknowledgements pending when the fetch began
            # ride in its statement and the next ones are written after it.
            await until(lambda: _true("B" in ran), timeout=5)
            assert ran[-1] == "B" and "limited" not in ran  # the fetch has not returned
            holder.rollback()
            await until(lambda: _true("limited" in ran), timeout=5)

            async def b_done() -> bool:
                return (await app_async.get_job_async(b)).state is JobState.COMPLETED

            await until(b_done, timeout=5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until_active(app: Conveyor, holder: psycopg.Connection[Any], dsn: str) -> None:
    """Until the worker's fetch waits for the row ``holder`` locked."""
    with psycopg.connect(dsn, autocommit=True) as conn:

        async def waiting() -> bool:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
                " AND transactionid = (SELECT backend_xid FROM pg_stat_activity"
                " WHERE pid = %s)",
                [holder.info.backend_pid],
            ).fetchone()
            return row is not None and row[0] > 0

        await until(waiting, timeout=10)


async def _true(value: bool) -> bool:
    return value


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def test_a_worker_whose_slots_are_all_taken_claims_no_more_for_a_send(
    app_async: Conveyor,
) -> None:
    """No express fetch while every slot runs a job and the worker claims nothing ahead (long
    jobs): what it claimed would wait here while other workers may have room."""
    await app_async.create_queue_async("tenants", fair=True)
    started = asyncio.Event()
    gate = asyncio.Event()

    @app_async.job("tenants")
    async def tenant(job: Job) -> None:
        started.set()
        await gate.wait()

    await app_async.send_async("tenants", {"key": "A"}, fair_key="A")
    stop = asyncio.Event()
    task = asyncio.create_task(
        app_async.run_worker_async(stop=stop, concurrency=1, prefetch=0, poll_interval=5.0)
    )
    try:
        await asyncio.wait_for(started.wait(), 10)
        b = await app_async.send_async("tenants", {"key": "B"}, fair_key="B")
        await asyncio.sleep(0.3)  # an express fetch takes a few ms; none may come
        assert (await app_async.get_job_async(b)).state is JobState.CREATED
        gate.set()

        async def b_done() -> bool:
            return (await app_async.get_job_async(b)).state is JobState.COMPLETED

        await until(b_done, timeout=5)
    finally:
        gate.set()
        stop.set()
        await asyncio.wait_for(task, 30)
