"""Issue 13, the database side: a grouped job waits for its dependencies, a replacing send that
arrives while its key's job runs queues one job after it, and the longest accepted schema name
still cancels, recovers and wakes ``wait_for``."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from conveyor import Conveyor, FrozenClock, Job, JobState
from conveyor._store.worker_store import WorkerStore
from conveyor.errors import InvalidOption
from conveyor.options import SCHEMA_NAME_MAX


@asynccontextmanager
async def worker(app: Conveyor, **options: Any) -> AsyncIterator[asyncio.Task[int]]:
    """A worker of ``app`` running in this loop until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(app.run_worker_async(stop=stop, poll_interval=0.05, **options))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until(predicate: Any, timeout: float = 10) -> None:
    """Poll an async predicate until it holds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


class Gate:
    """A handler that records each run's payload and holds the run until let go."""

    def __init__(self) -> None:
        self.runs: list[Any] = []
        self.running = asyncio.Event()
        self.release = asyncio.Event()
        self.overlap = 0
        self._now = 0

    async def __call__(self, job: Job) -> Any:
        self._now += 1
        self.overlap = max(self.overlap, self._now)
        self.runs.append(job.data)
        self.running.set()
        try:
            await asyncio.wait_for(self.release.wait(), 10)
        finally:
            self._now -= 1
        return job.data

    def serve(self, app: Conveyor, queue: str) -> None:
        """Register this gate as the handler of ``queue``."""

        @app.job(queue)
        async def handler(job: Job) -> Any:
            return await self(job)

    async def started(self) -> None:
        await asyncio.wait_for(self.running.wait(), 10)
        self.running.clear()


# -- item 3: a grouped job with depends_on waits for its dependency ------------------------------


def test_a_grouped_job_never_runs_before_its_dependency(app: Conveyor) -> None:
    ran: list[str] = []

    @app.job("first")
    def first(job: Job) -> None:
        ran.append("dependency")

    @app.job("grouped")
    def grouped(job: Job) -> None:
        ran.append(job.data["name"])

    dependency = app.send("first", {})
    dependant = app.send("grouped", {"name": "dependant"}, group_key="g", depends_on=[dependency])
    other = app.send("grouped", {"name": "other"}, group_key="g")
    assert app.drain(["grouped"]) == 1
    # The waiting job took no place in its group's line: the next job of the group ran.
    assert ran == ["other"]
    assert app.get_job(dependant).state is JobState.WAITING
    assert app.get_job(other).state is JobState.COMPLETED
    app.drain(["first"])
    app.drain(["grouped"])
    assert ran == ["other", "dependency", "dependant"]
    assert app.get_job(dependant).state is JobState.COMPLETED


async def test_a_waiting_group_head_is_not_claimed_by_a_running_worker(
    app_async: Conveyor,
) -> None:
    ran: list[str] = []

    @app_async.job("grouped")
    async def grouped(job: Job) -> None:
        ran.append(job.data["name"])

    held = await app_async.send_async("elsewhere", {})
    dependant = await app_async.send_async(
        "grouped", {"name": "dependant"}, group_key="g", depends_on=[held], priority=5
    )
    async with worker(app_async, queues=["grouped"]):
        tail = await app_async.send_async("grouped", {"name": "tail"}, group_key="g")
        await app_async.wait_for_async(tail, timeout=10)
        await asyncio.sleep(0.2)  # a few more polls: the dependant must still not run
        assert ran == ["tail"]
        assert (await app_async.get_job_async(dependant)).state is JobState.WAITING
        await app_async.cancel_async(held)  # policy 'fail': the dependant fails, never runs
        failed = await app_async.wait_for_async(dependant, timeout=10)
    assert failed.state is JobState.FAILED and ran == ["tail"]


# -- item 8: replace and debounce while the keyed job runs --------------------------------------


async def test_replace_while_the_keyed_job_runs_queues_one_job_after_it(
    app_async: Conveyor,
) -> None:
    gate = Gate()
    gate.serve(app_async, "doc")
    first = await app_async.send_async("doc", {"v": 1}, unique_key="doc-7", unique_mode="replace")
    async with worker(app_async, concurrency=4):
        await gate.started()
        second = await app_async.send_async(
            "doc", {"v": 2}, unique_key="doc-7", unique_mode="replace"
        )
        third = await app_async.send_async(
            "doc", {"v": 3}, unique_key="doc-7", unique_mode="replace"
        )
        kept = await app_async.send_async("doc", {"v": 4}, unique_key="doc-7")
        assert second != first
        assert third == second == kept  # one job queued behind the running one
        queued = await app_async.get_job_async(second)
        assert queued.state is JobState.WAITING and queued.data == {"v": 3}
        await asyncio.sleep(0.2)  # the queued job does not start while the first runs
        assert gate.runs == [{"v": 1}]
        gate.release.set()
        done = await app_async.wait_for_async(second, timeout=10)
    assert done.state is JobState.COMPLETED and done.result == {"v": 3}
    assert gate.runs == [{"v": 1}, {"v": 3}] and gate.overlap == 1


async def test_debounce_while_the_keyed_job_runs_queues_one_job_after_the_quiet_period(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    clock = FrozenClock(datetime(2031, 5, 1, 12, 0, 0, tzinfo=UTC))
    gate = Gate()
    async with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        gate.serve(app, "doc")
        first = await app.send_async("doc", {"v": 1}, unique_key="doc-7", debounce_seconds=30)
        clock.advance(30)
        async with worker(app):
            await gate.started()
            second = await app.send_async("doc", {"v": 2}, unique_key="doc-7", debounce_seconds=30)
            clock.advance(10)
            third = await app.send_async("doc", {"v": 3}, unique_key="doc-7", debounce_seconds=30)
            assert second == third != first
            gate.release.set()
            assert (await app.wait_for_async(first, timeout=10)).state is JobState.COMPLETED

            async def released() -> bool:
                return (await app.get_job_async(second)).state is JobState.CREATED

            await until(released)
            job = await app.get_job_async(second)
            assert job.run_at == clock() + timedelta(seconds=30)  # the last send's quiet period
            clock.advance(30)
            done = await app.wait_for_async(second, timeout=10)
    assert done.result == {"v": 3}
    assert gate.runs == [{"v": 1}, {"v": 3}]


async def test_send_batch_and_sql_send_replace_while_the_keyed_job_runs(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    gate = Gate()
    gate.serve(app_async, "doc")
    first = await app_async.send_async("doc", {"v": 1}, unique_key="k", unique_mode="replace")
    async with worker(app_async, concurrency=4):
        await gate.started()
        batch = await app_async.send_batch_async(
            [
                ("doc", {"v": 2}, {"unique_key": "k", "unique_mode": "replace"}),
                ("doc", {"v": 3}, {"unique_key": "other"}),
            ]
        )
        async with await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as conn:
            cur = await conn.execute(
                sql.SQL("SELECT {}.send('doc', %s::jsonb, %s::jsonb)").format(
                    sql.Identifier(app_async.schema)
                ),
                [json.dumps({"v": 5}), json.dumps({"unique_key": "k", "unique_mode": "replace"})],
            )
            row = await cur.fetchone()
            assert row is not None
            from_sql = row[0]
        assert batch[0] != first and from_sql == batch[0]
        assert (await app_async.get_job_async(batch[0])).data == {"v": 5}
        gate.release.set()
        done = await app_async.wait_for_async(batch[0], timeout=10)
    assert done.result == {"v": 5}
    assert sorted(r["v"] for r in gate.runs) == [1, 3, 5]


async def test_the_job_queued_behind_a_failed_or_cancelled_one_still_runs(
    app_async: Conveyor,
) -> None:
    gate = Gate()
    gate.serve(app_async, "doc")
    first = await app_async.send_async("doc", {"v": 1}, unique_key="k", unique_mode="replace")
    async with worker(app_async):
        await gate.started()
        second = await app_async.send_async("doc", {"v": 2}, unique_key="k", unique_mode="replace")
        await app_async.cancel_async(first)
        gate.release.set()
        done = await app_async.wait_for_async(second, timeout=10)
    assert done.state is JobState.COMPLETED and done.result == {"v": 2}
    # The key is free once both finished: the next send makes a new job.
    third = await app_async.send_async("doc", {"v": 3}, unique_key="k", unique_mode="replace")
    assert third not in (first, second)


async def test_concurrent_replacing_sends_queue_exactly_one_job_behind_the_running_one(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    gate = Gate()
    gate.serve(app_async, "doc")
    first = await app_async.send_async("doc", {"v": 0}, unique_key="k", unique_mode="replace")
    senders = [Conveyor(conveyor_dsn, schema=conveyor_schema) for _ in range(4)]
    try:
        async with worker(app_async):
            await gate.started()

            async def send(n: int) -> UUID:
                app = senders[n % len(senders)]
                return await app.send_async("doc", {"v": n}, unique_key="k", unique_mode="replace")

            ids = await asyncio.gather(*(send(n) for n in range(1, 25)))
            assert len(set(ids)) == 1 and ids[0] != first
            queued = await app_async.list_jobs_async(queue="doc", state="waiting")
            assert [j.id for j in queued] == [ids[0]]
            gate.release.set()
            done = await app_async.wait_for_async(ids[0], timeout=10)
    finally:
        for app in senders:
            await app.close_async()
    assert done.result in [{"v": n} for n in range(1, 25)]
    assert len(gate.runs) == 2


# -- item 9: the longest accepted schema name --------------------------------------------------


def test_a_schema_name_whose_channels_do_not_fit_is_refused(conveyor_dsn: str) -> None:
    longest = "s" * SCHEMA_NAME_MAX
    assert len(f"conveyor:{longest}:cancel".encode()) <= 63
    with pytest.raises(InvalidOption):
        Conveyor(conveyor_dsn, schema=longest + "s")


@pytest.fixture
def longest_schema(conveyor_dsn: str) -> Any:
    name = ("conveyor_longest_" + UUID(int=time.time_ns()).hex)[:SCHEMA_NAME_MAX]
    name = name + "x" * (SCHEMA_NAME_MAX - len(name))
    yield name
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


async def test_the_longest_schema_name_cancels_recovers_and_wakes_wait_for(
    conveyor_dsn: str, longest_schema: str
) -> None:
    started = asyncio.Event()
    stopped: list[int] = []
    async with Conveyor(conveyor_dsn, schema=longest_schema) as app:
        await app.migrate_async()

        @app.job("long", retry_delay=0)
        async def long(job: Job) -> int:
            if job.data.get("hold") and job.attempt == 1:
                started.set()
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    stopped.append(job.attempt)
                    raise
            return job.attempt

        cancelled = await app.send_async("long", {"hold": True})
        leader = WorkerStore(conveyor_dsn, app.schema, min_size=0, max_size=1)
        try:
            async with worker(app, stale_after=120, recover_interval=30):
                await asyncio.wait_for(started.wait(), 10)
                started.clear()
                await app.cancel_async(cancelled)
                assert (await app.wait_for_async(cancelled, 5)).state is JobState.CANCELLED
                await until(lambda: _true_if(stopped == [1]), 3)

                lost = await app.send_async("long", {"hold": True})
                await asyncio.wait_for(started.wait(), 10)
                async with await psycopg.AsyncConnection.connect(
                    conveyor_dsn, autocommit=True
                ) as conn:
                    await conn.execute(
                        sql.SQL(
                            "UPDATE {}.worker SET heartbeat_at = now() - interval '1 hour'"
                        ).format(sql.Identifier(app.schema))
                    )
                recovered = await leader.job_recover(30, 1, None)
                assert [(c.id, c.state) for c in recovered] == [(lost, "retry")]
                done = await app.wait_for_async(lost, timeout=10)
        finally:
            await leader.close()
    assert (done.state, done.result) == (JobState.COMPLETED, 2)
    assert stopped == [1, 1]


async def _true_if(value: bool) -> bool:
    return value
