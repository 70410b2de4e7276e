"""The worker in-process against a real PostgreSQL: outcomes, retries, dead letters, expiry,
cancellation, recovery, shutdown, wake-ups and events. Time moves by the app's clock, not sleeps."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conveyor import Conveyor, Fail, FrozenClock, Job, JobState, Retry
from conveyor._store.worker_store import Ack, WorkerStore
from conveyor.errors import JobStateError, WaitTimeout

T0 = datetime(2031, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def timed(conveyor_dsn: str, conveyor_schema: str, clock: FrozenClock) -> Iterator[Conveyor]:
    """An app whose 'now' is the frozen clock."""
    with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        yield app


async def test_sync_and_async_handlers_store_results_and_progress(app_async: Conveyor) -> None:
    @app_async.job("async.q")
    async def async_handler(job: Job) -> dict[str, Any]:
        job.report_progress(40, "reading")
        return {"double": job.data["n"] * 2, "attempt": job.attempt}

    threads: list[str] = []

    @app_async.job("sync.q")
    def sync_handler(job: Job) -> list[int]:
        threads.append(threading.current_thread().name)
        job.report_progress(100)
        return [job.data["n"], job.max_attempts]

    a = await app_async.send_async("async.q", {"n": 21})
    s = await app_async.send_async("sync.q", {"n": 5})
    assert await app_async.drain_async() == 2
    done_a = await app_async.get_job_async(a)
    done_s = await app_async.get_job_async(s)
    assert (done_a.state, done_a.result) == (JobState.COMPLETED, {"double": 42, "attempt": 1})
    assert done_a.progress == {"percent": 40, "message": "reading"}
    assert (done_s.state, done_s.result) == (JobState.COMPLETED, [5, 3])
    assert done_s.progress == {"percent": 100, "message": None}
    assert done_a.finished_at is not None and done_a.started_at is not None
    assert threads and threads[0].startswith("conveyor-job")


async def test_an_exception_stores_message_and_traceback(app_async: Conveyor) -> None:
    @app_async.job("boom", retry_limit=0)
    def boom(job: Job) -> None:
        raise ValueError("bad input 42")

    job_id = await app_async.send_async("boom", {})
    await app_async.drain_async()
    job = await app_async.get_job_async(job_id)
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert (job.error["type"], job.error["message"], job.error["attempt"]) == (
        "ValueError", "bad input 42", 1
    )  # fmt: skip
    assert "Traceback" in job.error["traceback"] and "bad input 42" in job.error["traceback"]


def test_retries_follow_the_fixed_policy_then_land_in_the_dead_letters(
    timed: Conveyor, clock: FrozenClock
) -> None:
    @timed.job("flaky", retry_limit=2, retry_delay=10, retry_backoff="fixed")
    def flaky(job: Job) -> None:
        raise RuntimeError(f"failure {job.attempt}")

    job_id = timed.send("flaky", {})
    assert timed.drain() == 1
    job = timed.get_job(job_id)
    assert (job.state, job.attempt) == (JobState.RETRY, 1)
    assert job.run_at == T0 + timedelta(seconds=10)
    clock.advance(9.9)
    assert timed.drain() == 0  # not due yet
    clock.advance(0.1)
    assert timed.drain() == 1
    job = timed.get_job(job_id)
    assert (job.state, job.attempt, job.run_at) == (
        JobState.RETRY,
        2,
        clock() + timedelta(seconds=10),
    )
    clock.advance(10)
    assert timed.drain() == 1
    dead = timed.get_job(job_id)
    assert (dead.state, dead.attempt) == (JobState.FAILED, 3)
    assert [e["message"] for e in dead.errors] == ["failure 1", "failure 2", "failure 3"]
    assert [j.id for j in timed.list_jobs(state="failed")] == [job_id]

    revived = timed.retry_dead(job_id)
    assert (revived.state, revived.attempt) == (JobState.CREATED, 0)
    assert timed.drain() == 1
    assert timed.get_job(job_id).attempt == 1
    with pytest.raises(JobStateError):
        timed.retry_dead(job_id)  # it is queued for retry, not dead


def test_linear_and_exponential_backoff(timed: Conveyor, clock: FrozenClock) -> None:
    @timed.job("lin", retry_limit=5, retry_delay=3, retry_backoff="linear")
    def lin(job: Job) -> None:
        raise RuntimeError

    @timed.job("exp", retry_limit=5, retry_delay=4, retry_backoff="exponential", retry_delay_max=20)
    def exp(job: Job) -> None:
        raise RuntimeError

    lin_id, exp_id = timed.send("lin", {}), timed.send("exp", {})
    delays: dict[str, list[float]] = {"lin": [], "exp": []}
    for _ in range(4):
        timed.drain()
        for name, job_id in (("lin", lin_id), ("exp", exp_id)):
            job = timed.get_job(job_id)
            delays[name].append((job.run_at - clock()).total_seconds())
        clock.advance(100)
    assert delays["lin"] == [3, 6, 9, 12]
    for got, nominal in zip(delays["exp"], [4, 8, 16, 20], strict=True):
        assert nominal * 0.9 <= got <= nominal  # 10% jitter, capped at retry_delay_max


def test_retry_snoozes_without_spending_an_attempt(timed: Conveyor, clock: FrozenClock) -> None:
    calls: list[int] = []

    @timed.job("snooze", retry_limit=0)
    def snooze(job: Job) -> str:
        calls.append(job.attempt)
        if len(calls) < 3:
            raise Retry(after=30)
        return "done"

    job_id = timed.send("snooze", {})
    timed.drain()
    job = timed.get_job(job_id)
    assert (job.state, job.attempt, job.run_at) == (JobState.CREATED, 0, T0 + timedelta(seconds=30))
    clock.advance(30)
    timed.drain()
    clock.advance(30)
    timed.drain()
    assert calls == [1, 1, 1]
    assert timed.get_job(job_id).result == "done"


def test_fail_skips_the_remaining_retries(app: Conveyor) -> None:
    @app.job("fatal", retry_limit=5, retry_delay=0)
    def fatal(job: Job) -> None:
        raise Fail("no point retrying")

    job_id = app.send("fatal", {})
    assert app.drain() == 1
    job = app.get_job(job_id)
    assert (job.state, job.attempt, job.error["type"]) == (JobState.FAILED, 1, "Fail")  # type: ignore[index]


def test_a_dead_job_is_copied_to_its_dead_letter_queue(app: Conveyor) -> None:
    @app.job("risky", retry_limit=0, dead_letter="risky.dead")
    def risky(job: Job) -> None:
        raise RuntimeError("nope")

    job_id = app.send("risky", {"order": 7})
    app.drain()
    assert app.get_job(job_id).state is JobState.FAILED
    copies = app.list_jobs(queue="risky.dead")
    assert [(c.data, c.state) for c in copies] == [({"order": 7}, JobState.CREATED)]


def test_retry_dead_all(app: Conveyor) -> None:
    @app.job("q", retry_limit=0)
    def fails_once(job: Job) -> str:
        if job.errors:
            return "ok"
        raise RuntimeError("first time")

    ids = app.send_batch([("q", {"n": n}) for n in range(3)])
    app.drain()
    assert app.retry_dead_all("q") == 3
    assert app.retry_dead_all("q") == 0
    app.drain()
    assert [app.get_job(i).result for i in ids] == ["ok"] * 3


def test_custom_retry_policy(timed: Conveyor, clock: FrozenClock) -> None:
    def policy(attempt: int, error: BaseException) -> float | None:
        return None if isinstance(error, KeyError) else 7.0 * attempt

    @timed.job("custom", retry_limit=5, retry_policy=policy)
    def custom(job: Job) -> None:
        raise (KeyError if job.attempt == 2 else RuntimeError)("x")

    job_id = timed.send("custom", {})
    timed.drain()
    assert timed.get_job(job_id).run_at == T0 + timedelta(seconds=7)
    clock.advance(7)
    timed.drain()
    assert timed.get_job(job_id).state is JobState.FAILED  # the policy said stop


async def test_an_async_job_past_expire_in_is_cancelled_and_retried(app_async: Conveyor) -> None:
    seen: list[str] = []

    @app_async.job("slow", expire_in=0.2, retry_limit=1, retry_delay=0)
    async def slow(job: Job) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append(f"cancelled {job.attempt}")
            raise

    job_id = await app_async.send_async("slow", {})
    started = time.monotonic()
    assert await app_async.drain_async() == 2
    assert time.monotonic() - started < 5
    job = await app_async.get_job_async(job_id)
    assert seen == ["cancelled 1", "cancelled 2"]
    assert job.state is JobState.FAILED
    assert [e["type"] for e in job.errors] == ["Expired", "Expired"]


def test_a_sync_job_past_expire_in_is_told_and_its_late_result_refused(app: Conveyor) -> None:
    told = threading.Event()

    @app.job("slow.sync", expire_in=0.2, retry_limit=0)
    def slow(job: Job) -> str:
        told.set() if job.cancelled.wait(10) else None
        return "too late"

    job_id = app.send("slow.sync", {})
    app.drain()
    assert told.wait(5)
    job = app.get_job(job_id)
    assert job.state is JobState.FAILED and job.result is None
    assert job.error is not None and job.error["type"] == "Expired"


def test_unprintable_and_unusual_exceptions_never_take_the_worker_down(app: Conveyor) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("cannot print me")

    @app.job("weird", retry_limit=0)
    def weird(job: Job) -> Any:
        kind = job.data["kind"]
        if kind == "unprintable":
            raise Unprintable
        if kind == "exit":
            raise SystemExit(3)
        if kind == "interrupt":
            raise KeyboardInterrupt
        if kind == "nul":
            raise ValueError("nul \x00 and surrogate \ud800")
        if kind == "result":
            return {"not json": object()}
        return "fine"

    kinds = ["unprintable", "exit", "interrupt", "nul", "result", "ok"]
    ids = app.send_batch([("weird", {"kind": k}) for k in kinds])
    assert app.drain() == len(kinds)
    jobs = {k: app.get_job(i) for k, i in zip(kinds, ids, strict=True)}
    assert jobs["ok"].result == "fine"
    for kind in kinds[:-1]:
        assert jobs[kind].state is JobState.FAILED, kind
    assert jobs["unprintable"].error["message"] == "<unprintable Unprintable>"  # type: ignore[index]
    assert jobs["exit"].error["type"] == "SystemExit"  # type: ignore[index]
    assert jobs["result"].error["type"] == "ResultNotStorable"  # type: ignore[index]


async def worker_in_background(
    app: Conveyor, **options: Any
) -> AsyncIterator[tuple[asyncio.Event, asyncio.Task[int]]]:
    stop = asyncio.Event()
    task = asyncio.create_task(app.run_worker_async(stop=stop, **options))
    yield stop, task
    stop.set()
    await asyncio.wait_for(task, 30)


async def test_cancel_tells_a_running_handler_at_once(app_async: Conveyor) -> None:
    started = asyncio.Event()
    outcome: list[str] = []

    @app_async.job("long")
    async def long(job: Job) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    job_id = await app_async.send_async("long", {})
    async for _stop, _task in worker_in_background(app_async, poll_interval=0.1):
        await asyncio.wait_for(started.wait(), 10)
        begin = time.monotonic()
        await app_async.cancel_async(job_id)
        while not outcome and time.monotonic() - begin < 5:
            await asyncio.sleep(0.01)
        assert outcome == ["cancelled"]
        assert time.monotonic() - begin < 1
    assert (await app_async.get_job_async(job_id)).state is JobState.CANCELLED


async def test_notify_wakes_an_idle_worker(app_async: Conveyor) -> None:
    ran = asyncio.Event()

    @app_async.job("wake")
    async def wake(job: Job) -> None:
        ran.set()

    async for _stop, _task in worker_in_background(app_async, poll_interval=60):
        await asyncio.sleep(0.5)  # let it fetch nothing and go idle, listening
        begin = time.monotonic()
        await app_async.send_async("wake", {})
        await asyncio.wait_for(ran.wait(), 5)
        assert time.monotonic() - begin < 1  # far below the 60 s poll


async def test_wait_for_returns_the_outcome(app_async: Conveyor) -> None:
    @app_async.job("compute")
    async def compute(job: Job) -> int:
        await asyncio.sleep(0.2)
        return int(job.data["n"]) ** 2

    async for _stop, _task in worker_in_background(app_async, poll_interval=60):
        job_id = await app_async.send_async("compute", {"n": 12})
        done = await app_async.wait_for_async(job_id, timeout=10)
        assert (done.state, done.result) == (JobState.COMPLETED, 144)
    later = await app_async.send_async("compute", {"n": 1}, start_after=3600)
    with pytest.raises(WaitTimeout):
        await app_async.wait_for_async(later, timeout=0.3)


def test_wait_for_sync_sees_a_cancellation(app: Conveyor) -> None:
    job_id = app.send("nobody.serves.this", {})
    threading.Timer(0.2, app.cancel, [job_id]).start()
    assert app.wait_for(job_id, timeout=10).state is JobState.CANCELLED


async def test_shutdown_hands_unfinished_jobs_back_without_spending_an_attempt(
    app_async: Conveyor,
) -> None:
    started = asyncio.Event()

    @app_async.job("stuck")
    async def stuck(job: Job) -> None:
        started.set()
        await asyncio.sleep(60)

    job_id = await app_async.send_async("stuck", {})
    stop = asyncio.Event()
    task = asyncio.create_task(
        app_async.run_worker_async(stop=stop, shutdown_timeout=0.2, poll_interval=0.1)
    )
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    job = await app_async.get_job_async(job_id)
    assert (job.state, job.attempt, job.worker_id) == (JobState.CREATED, 0, None)


async def test_shutdown_lets_in_flight_jobs_finish_within_the_timeout(app_async: Conveyor) -> None:
    started = asyncio.Event()

    @app_async.job("short")
    async def short(job: Job) -> str:
        started.set()
        await asyncio.sleep(0.3)
        return "finished"

    job_id = await app_async.send_async("short", {})
    stop = asyncio.Event()
    task = asyncio.create_task(
        app_async.run_worker_async(stop=stop, shutdown_timeout=10, poll_interval=0.1)
    )
    await asyncio.wait_for(started.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert (await app_async.get_job_async(job_id)).result == "finished"


async def test_jobs_of_a_dead_worker_are_recovered_and_its_late_ack_refused(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    @app_async.job("orphan")
    async def orphan(job: Job) -> int:
        return job.attempt

    job_id = await app_async.send_async("orphan", {})
    ghost = uuid.uuid4()  # a worker that claimed the job, then died: it has no heartbeat row
    store = WorkerStore(conveyor_dsn, app_async.schema, min_size=0, max_size=1)
    try:
        [claimed] = await store.job_fetch(["orphan"], ghost, 1, None)
        assert claimed[0] == job_id
        async for _stop, _task in worker_in_background(
            app_async, poll_interval=0.1, stale_after=1, recover_interval=0.2
        ):
            done = await app_async.wait_for_async(job_id, timeout=15)
        assert (done.state, done.result, done.attempt) == (JobState.COMPLETED, 2, 2)
        assert done.errors[0]["type"] == "WorkerLost"
        late = await store.job_ack_many(ghost, [Ack(job_id, 1, "completed", result="1")], None)
        assert late == []  # the lost attempt can no longer complete the job
    finally:
        await store.close()
    assert (await app_async.get_job_async(job_id)).result == 2


async def test_events_are_emitted(app_async: Conveyor) -> None:
    seen: list[tuple[str, Any]] = []
    for name in (
        "job.started", "job.completed", "job.attempt_failed", "job.retried", "job.failed",
        "job.dead",
    ):  # fmt: skip
        app_async.on(name)(lambda e, name=name: seen.append((name, e.job.id if e.job else None)))

    @app_async.on("job.completed")
    def broken_listener(event: Any) -> None:
        raise RuntimeError("listeners cannot hurt the worker")

    @app_async.job("ev", retry_limit=1, retry_delay=0)
    async def ev(job: Job) -> None:
        if job.data["fail"]:
            raise RuntimeError("x")

    ok = await app_async.send_async("ev", {"fail": False})
    bad = await app_async.send_async("ev", {"fail": True})
    await app_async.drain_async()
    names = [n for n, _ in seen]
    assert names.count("job.started") == 3
    assert ("job.completed", ok) in seen
    assert names.count("job.attempt_failed") == 2
    assert ("job.retried", bad) in seen
    # The job failed once, when its last attempt did; job.dead says the same.
    assert names.count("job.failed") == 1 and ("job.failed", bad) in seen
    assert names.count("job.dead") == 1 and ("job.dead", bad) in seen


async def test_handler_defaults_apply_to_sends_and_to_the_queue(app_async: Conveyor) -> None:
    @app_async.job("mail", retry_limit=7, priority=3)
    async def mail(job: Job) -> None:
        pass

    job = await app_async.get_job_async(await app_async.send_async("mail", {}))
    assert (job.retry_limit, job.priority) == (7, 3)
    await app_async.drain_async()
    queue = await app_async.get_queue_async("mail")
    assert (queue.retry_limit, queue.priority) == (7, 3)


async def test_priority_then_run_at_order(app_async: Conveyor) -> None:
    order: list[str] = []

    @app_async.job("ordered")
    async def ordered(job: Job) -> None:
        order.append(job.data)

    await app_async.send_batch_async(
        [("ordered", "low-1"), ("ordered", "high", {"priority": 10}), ("ordered", "low-2")]
    )
    await app_async.drain_async(concurrency=1, prefetch=0)
    assert order == ["high", "low-1", "low-2"]


def test_report_progress_outside_a_handler_is_refused(app: Conveyor) -> None:
    job = app.get_job(app.send("q", {}))
    with pytest.raises(JobStateError):
        job.report_progress(10)
    assert not job.is_cancelled()


def test_worker_needs_handlers(app: Conveyor) -> None:
    from conveyor.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        app.drain()
    with pytest.raises(ConfigurationError):
        app.drain(["unknown"])


async def test_run_worker_refuses_a_running_loop(app_async: Conveyor) -> None:
    from conveyor.errors import ConfigurationError

    @app_async.job("x")
    async def x(job: Job) -> None:
        pass

    with pytest.raises(ConfigurationError):
        app_async.drain()


def test_transactional_send_then_work(app: Conveyor, conveyor_dsn: str) -> None:
    @app.job("tx.work")
    def work(job: Job) -> str:
        return "ran"

    with psycopg.connect(conveyor_dsn) as conn:
        kept = app.send("tx.work", {}, connection=conn)
        conn.commit()
        app.send("tx.work", {}, connection=conn)
        conn.rollback()
    assert app.drain() == 1
    assert app.get_job(kept).result == "ran"


def test_a_worker_refuses_a_schema_that_is_behind(conveyor_dsn: str, scratch_schema: str) -> None:
    from conveyor import SchemaOutOfDate

    with Conveyor(conveyor_dsn, schema=scratch_schema) as fresh:

        @fresh.job("q")
        def handler(job: Job) -> str:
            return "ran"

        with pytest.raises(SchemaOutOfDate):
            fresh.drain()
        fresh.run_worker(burst=True, migrate=True, install_signal_handlers=False)
        job_id = fresh.send("q", {})
        fresh.drain()
        assert fresh.get_job(job_id).result == "ran"


async def test_a_cancelled_job_waiting_in_the_prefetch_buffer_never_starts(
    app_async: Conveyor,
) -> None:
    gate = asyncio.Event()
    ran: list[int] = []

    @app_async.job("buffered")
    async def buffered(job: Job) -> None:
        ran.append(job.data["n"])
        await gate.wait()

    first = await app_async.send_async("buffered", {"n": 1})
    second = await app_async.send_async("buffered", {"n": 2})
    async for _stop, _task in worker_in_background(
        app_async, concurrency=1, prefetch=1, poll_interval=0.1
    ):
        while not ran:
            await asyncio.sleep(0.01)
        held = await app_async.get_job_async(second)
        assert held.state is JobState.ACTIVE  # claimed into the buffer, behind the first
        await app_async.cancel_async(second)
        await asyncio.sleep(0.3)
        gate.set()
        assert (await app_async.wait_for_async(first, timeout=10)).state is JobState.COMPLETED
        await asyncio.sleep(0.3)
    assert ran == [1]
    assert (await app_async.get_job_async(second)).state is JobState.CANCELLED


async def test_recovery_tells_a_live_worker_to_stop_the_attempt_it_lost(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    """An attempt recovered while its worker is alive after all (presumed dead: its heartbeat
    looked stale, as when frozen or cut off) is stopped at once through the cancel channel, not
    at the next heartbeat; the worker then runs the job's next attempt normally."""
    stopped = asyncio.Event()
    attempts: list[int] = []

    @app_async.job("lost", retry_delay=0)
    async def lost(job: Job) -> int:
        attempts.append(job.attempt)
        if job.attempt == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                stopped.set()
                raise
        return job.attempt

    job_id = await app_async.send_async("lost", {})
    leader = WorkerStore(conveyor_dsn, app_async.schema, min_size=0, max_size=1)
    try:
        async for _stop, _task in worker_in_background(
            app_async, heartbeat_interval=15, recover_interval=30, poll_interval=0.1
        ):
            while attempts != [1]:
                await asyncio.sleep(0.01)
            async with await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as c:
                await c.execute(
                    sql.SQL("UPDATE {}.worker SET heartbeat_at = now() - interval '1 hour'").format(
                        sql.Identifier(app_async.schema)
                    )
                )
            recovered = await leader.job_recover(30, 1, None)
            assert [(c.id, c.state) for c in recovered] == [(job_id, "retry")]
            await asyncio.wait_for(stopped.wait(), 3)
            done = await app_async.wait_for_async(job_id, timeout=10)
    finally:
        await leader.close()
    assert (done.state, done.result, attempts) == (JobState.COMPLETED, 2, [1, 2])
    assert done.errors[0]["type"] == "WorkerLost"
