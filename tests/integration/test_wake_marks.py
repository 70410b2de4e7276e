"""Sends notify a queue only while a worker waits for it (issue 14): a notifying commit holds a
cluster-wide lock through its WAL flush, so senders that all notify commit one at a time. A
worker with nothing to do holds its queues' idle marks (session advisory locks on its LISTEN
connection); a send on a pooled connection notifies only when it finds a mark held, and a worker
that takes a mark looks once more for the jobs sent before it did."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conveyor import Conveyor, Job
from conveyor._store import rows
from conveyor._store.listen import Listener
from conveyor._store.queries import queries
from conveyor._store.worker_store import WorkerStore
from conveyor.options import JobSpec


async def marks(dsn: str, schema: str, queue: str) -> int:
    """How many sessions hold the idle mark of ``queue`` (one at most: it is exclusive)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND mode = 'ExclusiveLock' AND objsubid = 2"
            " AND classid = hashtext(%s)::oid AND objid = hashtext(%s)::oid",
            [f"conveyor:{schema}", queue],
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def until(check: Callable[[], Any], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def worker(app: Conveyor, **options: Any) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(app.run_worker_async(stop=stop, **options))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@asynccontextmanager
async def listening(dsn: str, schema: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"conveyor:{schema}")))
        yield conn


async def heard(conn: psycopg.AsyncConnection[Any], seconds: float) -> list[str]:
    return [note.payload async for note in conn.notifies(timeout=seconds)]


async def test_a_send_notifies_its_queue_only_while_a_worker_waits_for_it(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    started: list[float] = []

    @app_async.job("marks.idle")
    async def handle(job: Job) -> None:
        started.append(time.monotonic())

    async with listening(conveyor_dsn, conveyor_schema) as listener:
        await app_async.send_async("marks.idle", {"n": 0})
        assert await heard(listener, 0.3) == []  # no worker: nobody to wake
        async with worker(app_async, poll_interval=30):
            await until(lambda: marks(conveyor_dsn, conveyor_schema, "marks.idle"))
            await until(lambda: asyncio.sleep(0, len(started) == 1))
            sent = time.monotonic()
            await app_async.send_async("marks.idle", {"n": 1})
            await until(lambda: asyncio.sleep(0, len(started) == 2), 5)
            assert started[1] - sent < 1, "the idle worker was not woken (it polls every 30 s)"
            assert await heard(listener, 0.3) == ["marks.idle"]
        assert await marks(conveyor_dsn, conveyor_schema, "marks.idle") == 0  # gone with it


async def test_a_worker_that_goes_idle_while_a_quiet_send_commits_still_runs_its_job(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The send took the mark's lock shared before the worker asked for the mark: it will not
    notify, and the worker cannot take the mark until it commits. The worker keeps asking, less
    and less often, and once it holds the mark it looks again: it finds the job with no NOTIFY
    and no poll."""
    started: list[float] = []
    asked: list[float] = []
    take = WorkerStore.mark_idle

    async def counted(
        store: WorkerStore, listener: Listener, queues: Sequence[str]
    ) -> dict[str, str]:
        asked.append(time.monotonic())
        return await take(store, listener, queues)

    monkeypatch.setattr(WorkerStore, "mark_idle", counted)

    @app_async.job("marks.race")
    async def handle(job: Job) -> None:
        started.append(time.monotonic())

    await app_async.send_async("marks.race", {"n": 0})  # the queue exists; run at start
    params = rows.plain_one_params(JobSpec(uuid.uuid4(), "marks.race", "{}"), "{}", None, None)
    params |= {"channel": f"conveyor:{conveyor_schema}", "quiet": True}
    send = queries(conveyor_schema)["job_insert_plain"].sql
    async with (
        listening(conveyor_dsn, conveyor_schema) as listener,
        await psycopg.AsyncConnection.connect(conveyor_dsn) as sender,
    ):
        await sender.execute(send, params)  # the lock taken shared, not committed
        async with worker(app_async, poll_interval=30):
            await until(lambda: asyncio.sleep(0, len(started) == 1))
            await asyncio.sleep(1)
            assert await marks(conveyor_dsn, conveyor_schema, "marks.race") == 0
            # Backing off to every 50 ms: about 25 asks in that second, not hundreds.
            assert 5 < len(asked) < 60, len(asked)
            await sender.commit()
            committed = time.monotonic()
            await until(lambda: asyncio.sleep(0, len(started) == 2), 5)
            assert started[1] - committed < 1, "found only by the poll"
            assert await marks(conveyor_dsn, conveyor_schema, "marks.race") == 1
        assert await heard(listener, 0.1) == []  # found by looking again, not by a NOTIFY


async def test_a_worker_looks_again_once_it_has_taken_the_mark(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quiet send that commits after the worker's fetch came back short and before the worker
    took the mark neither notifies nor is seen by that fetch: the worker's look-up of the next
    due time, made after it took the mark, finds it."""
    started: list[float] = []

    @app_async.job("marks.after")
    async def handle(job: Job) -> None:
        started.append(time.monotonic())

    await app_async.send_async("marks.after", {"n": 0})
    params = rows.plain_one_params(JobSpec(uuid.uuid4(), "marks.after", "{}"), "{}", None, None)
    params |= {"channel": f"conveyor:{conveyor_schema}", "quiet": True}
    send = queries(conveyor_schema)["job_insert_plain"].sql
    take = WorkerStore.mark_idle
    committed: list[float] = []

    async with await psycopg.AsyncConnection.connect(conveyor_dsn) as sender:

        async def commit_then_take(
            store: WorkerStore, listener: Listener, queues: Sequence[str]
        ) -> dict[str, str]:
            if not committed:  # after the first fetch, which claimed the first job only
                await sender.execute(send, params)
                await sender.commit()
                committed.append(time.monotonic())
            return await take(store, listener, queues)

        monkeypatch.setattr(WorkerStore, "mark_idle", commit_then_take)
        async with worker(app_async, poll_interval=30):
            await until(lambda: asyncio.sleep(0, len(started) == 2), 5)
    assert committed and started[1] - committed[0] < 1, "found only by the poll"


async def test_a_worker_with_a_backlog_gives_its_marks_up_and_takes_them_back_when_idle(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    @app_async.job("marks.backlog")
    async def handle(job: Job) -> None:
        await asyncio.sleep(0.002)

    await app_async.send_async("marks.backlog", {})
    seen: list[int] = []
    async with worker(app_async, concurrency=2, prefetch=0, poll_interval=30):
        await until(lambda: marks(conveyor_dsn, conveyor_schema, "marks.backlog"))
        await app_async.send_batch_async([("marks.backlog", {"i": i}) for i in range(1000)])
        for _ in range(300):
            seen.append(await marks(conveyor_dsn, conveyor_schema, "marks.backlog"))
            if seen[-1] == 0:
                break
            await asyncio.sleep(0.01)
        assert seen[-1] == 0, "the mark was held throughout the backlog"
        await until(lambda: marks(conveyor_dsn, conveyor_schema, "marks.backlog"), 30)
        assert await app_async.list_jobs_async("marks.backlog", state="created") == []


async def test_a_worker_takes_the_marks_of_one_that_died_within_a_poll_interval(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    """A worker that found the mark taken asks again when it hears its queue; one that dies
    (its connection closed) gives its marks up silently, so it asks again after a poll
    interval too."""

    @app_async.job("marks.heir")
    async def handle(job: Job) -> None:
        return None

    await app_async.send_async("marks.heir", {})
    first, second = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(app_async.run_worker_async(stop=first, poll_interval=0.5))
    heir = asyncio.create_task(app_async.run_worker_async(stop=second, poll_interval=0.5))
    try:
        await until(lambda: marks(conveyor_dsn, conveyor_schema, "marks.heir"))
        await asyncio.sleep(0.5)  # the other one found it taken
    finally:
        first.set()
    await asyncio.wait_for(holder, 30)
    try:
        await until(lambda: marks(conveyor_dsn, conveyor_schema, "marks.heir"), 3)
    finally:
        second.set()
        await asyncio.wait_for(heir, 30)


async def test_a_worker_that_gives_its_marks_up_hands_them_to_an_idle_one_and_sends_cost_none(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another worker holds the mark, a worker that found it taken does not ask for it
    again at each send it hears (a statement per send and idle worker); it asks when the holder
    says it gave it up, here because a backlog of another queue keeps the holder busy."""
    asked: list[list[str]] = []
    take = WorkerStore.mark_idle

    async def counted(
        store: WorkerStore, listener: Listener, queues: Sequence[str]
    ) -> dict[str, str]:
        asked.append(list(queues))
        return await take(store, listener, queues)

    monkeypatch.setattr(WorkerStore, "mark_idle", counted)
    ran: list[int] = []

    @app_async.job("marks.shared")
    async def shared(job: Job) -> None:
        ran.append(1)

    @app_async.job("marks.flood")
    async def flood(job: Job) -> None:
        await asyncio.sleep(0.002)

    await app_async.send_async("marks.shared", {})
    await app_async.send_async("marks.flood", {})
    first, second = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(
        app_async.run_worker_async(
            ["marks.shared", "marks.flood"], 2, prefetch=0, stop=first, poll_interval=30
        )
    )
    try:
        await until(lambda: marks(conveyor_dsn, conveyor_schema, "marks.flood"))
        heir = asyncio.create_task(
            app_async.run_worker_async(["marks.shared"], stop=second, poll_interval=30)
        )
        try:
            await asyncio.sleep(0.5)  # it found the mark taken
            before = len(asked)
            for n in range(10):
                await app_async.send_async("marks.shared", {"n": n})
                await asyncio.sleep(0.02)
            await until(lambda: asyncio.sleep(0, len(ran) == 11))
            assert len(asked) - before <= 1, asked[before:]
            await app_async.send_batch_async([("marks.flood", {"i": i}) for i in range(3000)])
            # The holder, busy, gives both marks up; the other takes the shared queue's.
            await until(
                lambda: marks_held(
                    conveyor_dsn, conveyor_schema, ["marks.shared"], ["marks.flood"]
                ),
                5,
            )
        finally:
            second.set()
            await asyncio.wait_for(heir, 30)
    finally:
        first.set()
        await asyncio.wait_for(holder, 60)


async def marks_held(dsn: str, schema: str, held: list[str], free: list[str]) -> bool:
    return all([await marks(dsn, schema, q) == 1 for q in held]) and all(
        [await marks(dsn, schema, q) == 0 for q in free]
    )
