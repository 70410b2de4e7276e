"""The operator's API against a real PostgreSQL: filtered job lists, deleting jobs, the dead
letters and the registered workers."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from conveyor import (
    Conveyor,
    Fail,
    FrozenClock,
    InvalidOption,
    Job,
    JobNotFound,
    JobState,
    JobStateError,
    WorkerInfo,
)

T0 = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest_asyncio.fixture
async def timed(
    conveyor_dsn: str, conveyor_schema: str, clock: FrozenClock
) -> AsyncIterator[Conveyor]:
    """An app whose 'now' is the frozen clock."""
    async with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        yield app


def always_fail(job: Job) -> None:
    raise Fail("no")


async def dead_jobs(app: Conveyor, queue: str, n: int) -> list[Job]:
    """``n`` failed jobs of ``queue``, oldest failure first."""
    app.job(queue, always_fail, retry_limit=0)
    ids = [await app.send_async(queue, {"n": i}) for i in range(n)]
    await app.drain_async([queue])
    return [await app.get_job_async(i) for i in ids]


async def test_list_jobs_since_a_time_or_an_age(timed: Conveyor, clock: FrozenClock) -> None:
    old = await timed.send_async("q", {})
    clock.advance(3600)
    new = await timed.send_async("q", {})
    assert [j.id for j in await timed.list_jobs_async(since=60)] == [new]
    assert [j.id for j in await timed.list_jobs_async(since=timedelta(hours=2))] == [new, old]
    assert [j.id for j in await timed.list_jobs_async(since=T0 + timedelta(seconds=1))] == [new]
    assert [j.id for j in await timed.list_jobs_async(since=T0)] == [new, old]


async def test_list_jobs_since_covers_finished_jobs(timed: Conveyor, clock: FrozenClock) -> None:
    @timed.job("done")
    def done(job: Job) -> None:
        pass

    clock.advance(10)
    job_id = await timed.send_async("done", {})
    await timed.drain_async()
    found = await timed.list_jobs_async(since=5, state="completed")
    assert [j.id for j in found] == [job_id]


async def test_list_jobs_search_matches_payload_text_and_id_ignoring_case(
    app_async: Conveyor,
) -> None:
    alice = await app_async.send_async("mail", {"to": "Alice@Example.com"})
    bob = await app_async.send_async("mail", {"to": "bob@example.com", "tag": "50%_off"})
    assert [j.id for j in await app_async.list_jobs_async(search="alice")] == [alice]
    assert {j.id for j in await app_async.list_jobs_async(search="EXAMPLE")} == {alice, bob}
    assert [j.id for j in await app_async.list_jobs_async(search=str(bob)[:13])] == [bob]
    # Wildcards are literal: "%" and "_" match only themselves.
    assert [j.id for j in await app_async.list_jobs_async(search="50%_")] == [bob]
    assert await app_async.list_jobs_async(search="0%o") == []
    assert await app_async.list_jobs_async(search="a_ice") == []
    assert await app_async.list_jobs_async(search="\\") == []


async def test_list_jobs_search_combines_with_queue_and_state(app_async: Conveyor) -> None:
    await app_async.send_async("a", {"k": "needle"})
    wanted = await app_async.send_async("b", {"k": "needle"})
    await app_async.send_async("b", {"k": "hay"})
    found = await app_async.list_jobs_async("b", "created", search="needle")
    assert [j.id for j in found] == [wanted]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": -1}, "since"),
        ({"since": datetime(2030, 1, 1)}, "aware"),
        ({"search": ""}, "search"),
        ({"search": 5}, "search"),
        ({"search": "a\x00b"}, "NUL"),
    ],
)
async def test_list_jobs_refuses_bad_filters(
    app_async: Conveyor, options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidOption, match=message):
        await app_async.list_jobs_async(**options)  # type: ignore[arg-type]


async def test_delete_a_queued_and_a_finished_job(app_async: Conveyor) -> None:
    @app_async.job("done")
    def done(job: Job) -> None:
        pass

    finished = await app_async.send_async("done", {})
    await app_async.drain_async()
    queued = await app_async.send_async("later", {}, start_after=3600)
    for job_id in (queued, finished):
        assert await app_async.delete_job_async(job_id) is None
        with pytest.raises(JobNotFound):
            await app_async.get_job_async(job_id)


async def test_delete_wakes_whoever_waits_for_the_job(app_async: Conveyor) -> None:
    job_id = await app_async.send_async("later", {}, start_after=3600)
    waiting = asyncio.create_task(app_async.wait_for_async(job_id, timeout=30))
    await asyncio.sleep(0.3)  # let the waiter listen
    begin = time.monotonic()
    await app_async.delete_job_async(job_id)
    with pytest.raises(JobNotFound):
        await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - begin < 5


async def test_delete_a_dead_job(app_async: Conveyor) -> None:
    (dead,) = await dead_jobs(app_async, "risky", 1)
    await app_async.delete_job_async(str(dead.id))
    assert await app_async.list_dead_async() == []


async def test_delete_refuses_a_running_job_and_an_unknown_id(app_async: Conveyor) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @app_async.job("long")
    async def long(job: Job) -> None:
        started.set()
        await release.wait()

    job_id = await app_async.send_async("long", {})
    task = asyncio.create_task(app_async.drain_async())
    await asyncio.wait_for(started.wait(), 10)
    with pytest.raises(JobStateError, match="active"):
        await app_async.delete_job_async(job_id)
    release.set()
    await asyncio.wait_for(task, 10)
    assert (await app_async.get_job_async(job_id)).state is JobState.COMPLETED
    with pytest.raises(JobNotFound):
        await app_async.delete_job_async("00000000-0000-0000-0000-000000000000")


async def test_list_dead_newest_first_by_queue_with_paging(
    timed: Conveyor, clock: FrozenClock
) -> None:
    first = await dead_jobs(timed, "a", 1)
    clock.advance(60)
    later = await dead_jobs(timed, "b", 2)
    clock.advance(60)
    last = await dead_jobs(timed, "a", 1)
    assert [j.id for j in await timed.list_dead_async("a")] == [last[0].id, first[0].id]
    found = await timed.list_dead_async()
    assert [j.queue for j in found] == ["a", "b", "b", "a"]
    assert all(j.state is JobState.FAILED and j.error for j in found)
    assert [j.id for j in await timed.list_dead_async(limit=2, offset=1)] == [
        found[1].id,
        found[2].id,
    ]
    assert {j.id for j in found[1:3]} == {j.id for j in later}


async def test_purge_dead_by_queue_and_age(timed: Conveyor, clock: FrozenClock) -> None:
    await dead_jobs(timed, "a", 2)
    await dead_jobs(timed, "b", 1)
    clock.advance(3600)
    recent = await dead_jobs(timed, "a", 1)

    @timed.job("ok")
    def ok(job: Job) -> None:
        pass

    completed = await timed.send_async("ok", {})
    await timed.drain_async(["ok"])
    assert await timed.purge_dead_async("a", older_than=timedelta(minutes=30)) == 2
    assert {j.id for j in await timed.list_dead_async()} == {
        recent[0].id,
        *(j.id for j in await timed.list_dead_async("b")),
    }
    assert await timed.purge_dead_async() == 2
    assert await timed.list_dead_async() == []
    assert (await timed.get_job_async(completed)).state is JobState.COMPLETED


async def test_dead_letter_arguments_are_checked(app_async: Conveyor) -> None:
    with pytest.raises(InvalidOption):
        await app_async.list_dead_async(limit=0)
    with pytest.raises(InvalidOption):
        await app_async.purge_dead_async(older_than=-5)
    with pytest.raises(ValueError):
        await app_async.list_dead_async("bad name!")


async def test_list_workers_shows_a_running_worker(app_async: Conveyor) -> None:
    @app_async.job("w")
    def w(job: Job) -> None:
        pass

    assert await app_async.list_workers_async() == []
    stop = asyncio.Event()
    task = asyncio.create_task(app_async.run_worker_async(["w"], 3, stop=stop, poll_interval=0.1))
    try:
        for _ in range(200):
            workers = await app_async.list_workers_async()
            if workers:
                break
            await asyncio.sleep(0.05)
        (worker,) = workers
        assert isinstance(worker, WorkerInfo)
        assert worker.queues == ["w"] and worker.concurrency == 3
        assert worker.pid == os.getpid() and worker.hostname == socket.gethostname()
        assert worker.started_at <= worker.heartbeat_at
        assert 0 <= worker.heartbeat_age < 30
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert await app_async.list_workers_async() == []


def test_heartbeat_age_counts_from_now() -> None:
    beat = datetime.now(UTC) - timedelta(seconds=90)
    info = WorkerInfo(uuid.UUID(int=0), "h", 1, ["q"], 1, beat, beat, {})
    assert 89 < info.heartbeat_age < 100
