"""Defects that once stopped a worker's work silently, each pinned by a test against a real
PostgreSQL: bad retry delays, unsupervised services, stuck sync handlers, a heartbeat slower than
stale_after, results too large to store, and a dead leader's lease."""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from conveyor import Conveyor, FrozenClock, Job, JobState, Retry
from conveyor._store.worker_store import Ack, WorkerStore
from conveyor.errors import DatabaseUnavailable, InvalidOption
from conveyor.events import Events
from conveyor.scheduler import Scheduler
from conveyor.worker import completer as completer_module
from conveyor.worker import runner
from conveyor.worker.completer import Completer
from conveyor.worker.service import ServiceContext
from conveyor.worker.state import WorkerState
from tests.integration.test_worker import worker_in_background


def _execute(dsn: str, schema: str, statement: str, *params: object) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(schema=sql.Identifier(schema)), params)


# -- 1. one bad retry delay never wedges the acks --------------------------------------------


async def test_a_retry_after_too_far_is_recorded_on_its_job_and_the_others_finish(
    app_async: Conveyor,
) -> None:
    @app_async.job("bad.retry", retry_limit=1, retry_delay=0)
    async def bad(job: Job) -> None:
        raise Retry(after=1e13)

    @app_async.job("fine")
    async def fine(job: Job) -> int:
        return int(job.data["n"])

    bad_id = await app_async.send_async("bad.retry", {})
    fine_ids = [await app_async.send_async("fine", {"n": n}) for n in range(20)]
    await app_async.drain_async(concurrency=5)
    done = await app_async.get_job_async(bad_id)
    # Retry(after=1e13) is an error of the attempt: retried by the policy, then dead.
    assert done.state is JobState.FAILED
    assert [e["type"] for e in done.errors] == ["InvalidRetryDelay", "InvalidRetryDelay"]
    assert "ten years" in done.errors[0]["message"]
    for n, job_id in enumerate(fine_ids):
        assert (await app_async.get_job_async(job_id)).result == n


async def test_a_retry_policy_returning_infinity_retries_at_the_cap_with_the_reason_stored(
    app_async: Conveyor,
) -> None:
    def policy(attempt: int, error: BaseException) -> float:
        return float("inf")

    @app_async.job("inf.policy", retry_policy=policy, retry_delay_max=3600)
    async def failing(job: Job) -> None:
        raise ValueError("nope")

    job_id = await app_async.send_async("inf.policy", {})
    await app_async.drain_async()
    job = await app_async.get_job_async(job_id)
    assert job.state is JobState.RETRY
    assert "retry_policy returned inf" in job.errors[0]["retry_policy_error"]
    wait = (job.run_at - datetime.now(UTC)).total_seconds()
    assert 3500 < wait <= 3600


async def test_a_batch_with_a_row_the_database_refuses_writes_every_other_row(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    """An outcome that reaches the database unvalidated (a delay past the timestamp range) is
    isolated: the other acks of its batch are written, and it fails its job with the reason."""

    @app_async.job("q")
    async def noop(job: Job) -> None:
        return None

    ids = [await app_async.send_async("q", {"n": n}) for n in range(5)]
    store = WorkerStore(conveyor_dsn, app_async.schema, min_size=0, max_size=1)
    worker = uuid.uuid4()
    written: list[tuple[str, str | None]] = []
    try:
        await store.worker_register(worker, "test", 1, ["q"], 5)
        claimed = await store.job_fetch(["q"], worker, 5, None)
        assert len(claimed) == 5
        completer = Completer(
            store,
            worker,
            lambda: None,
            lambda ack, changed: written.append((ack.outcome, changed and changed.state)),
            lambda exc: None,
        )
        for job_id in ids:
            delay = 1e13 if job_id == ids[2] else None
            outcome = "retry" if delay else "completed"
            completer.add(Ack(job_id, 1, outcome, error=json.dumps({"m": 1}), delay=delay))
        await completer.flush()
    finally:
        await store.close()
    states = {i: (await app_async.get_job_async(i)).state for i in ids}
    assert [states[i] for i in ids if i != ids[2]] == [JobState.COMPLETED] * 4
    bad = await app_async.get_job_async(ids[2])
    assert bad.state is JobState.RETRY
    assert bad.errors[-1]["type"] == "OutcomeRefused"
    assert sorted(written) == [("completed", "completed")] * 4 + [("retry", "retry")]


async def test_a_pile_of_acks_is_written_in_bounded_statements_and_none_is_lost_on_failure(
    app_async: Conveyor, conveyor_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acks that piled up while the database was slow go out in statements of at most
    ACKS_PER_STATEMENT; a statement that fails leaves its acks and those after it queued (and
    counted as unwritten), and the next flush writes them."""
    monkeypatch.setattr(completer_module, "ACKS_PER_STATEMENT", 4)

    @app_async.job("q")
    async def noop(job: Job) -> None:
        return None

    ids = [await app_async.send_async("q", {"n": n}) for n in range(10)]
    store = WorkerStore(conveyor_dsn, app_async.schema, min_size=0, max_size=1)
    worker = uuid.uuid4()
    sizes: list[int] = []
    original = store.job_ack_many

    async def counted(worker_id: uuid.UUID, acks: list[Ack], now: datetime | None) -> object:
        sizes.append(len(acks))
        if len(sizes) == 2:
            raise DatabaseUnavailable("connection lost")
        return await original(worker_id, acks, now)

    monkeypatch.setattr(store, "job_ack_many", counted)
    try:
        await store.worker_register(worker, "test", 1, ["q"], 10)
        assert len(await store.job_fetch(["q"], worker, 10, None)) == 10
        completer = Completer(store, worker, lambda: None, lambda a, c: None, lambda e: None)
        for job_id in ids:
            completer.add(Ack(job_id, 1, "completed"))
        with pytest.raises(DatabaseUnavailable):
            await completer.flush()
        assert sizes == [4, 4]
        assert sorted(i for i, _ in completer.unwritten()) == sorted(ids[4:])
        await completer.flush()
        assert sizes == [4, 4, 4, 2] and completer.unwritten() == []
        # Riding on a claim, at most one statement's worth goes; the rest stays for the loop.
        for job_id in ids[:6]:
            completer.add(Ack(job_id, 2, "completed"))
        await completer.fetch(["q"], 1)
        assert len(completer.unwritten()) == 2
    finally:
        await store.close()
    states = {(await app_async.get_job_async(i)).state for i in ids}
    assert states == {JobState.COMPLETED}


# -- 2. background services are supervised ---------------------------------------------------


async def test_a_crashed_completer_is_restarted_and_no_outcome_is_lost(
    app_async: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    crashes = 0
    original = Completer.flush

    async def flaky_flush(self: Completer) -> None:
        nonlocal crashes
        if crashes == 0:
            crashes += 1
            raise RuntimeError("completer bug")
        await original(self)

    monkeypatch.setattr(Completer, "flush", flaky_flush)
    # Down long enough for the idle producer to find it down, and wait for it to come back.
    monkeypatch.setattr(runner, "Supervisor", functools.partial(runner.Supervisor, min_backoff=0.5))
    errors: list[dict[str, object]] = []
    app_async.on("worker.error")(lambda event: errors.append(event.error or {}))

    @app_async.job("q")
    async def noop(job: Job) -> int:
        return 1

    ids = [await app_async.send_async("q", {}) for _ in range(10)]
    async for _stop, _task in worker_in_background(app_async, poll_interval=0.1):
        done = await asyncio.gather(*(app_async.wait_for_async(i, timeout=20) for i in ids))
        # Once the completer is back, the worker fetches again.
        later = [await app_async.send_async("q", {}) for _ in range(10)]
        done += await asyncio.gather(*(app_async.wait_for_async(i, timeout=20) for i in later))
    assert [j.state for j in done] == [JobState.COMPLETED] * 20
    assert crashes == 1
    assert {"service": "completer", "message": "completer bug"} in errors


async def test_a_schedule_with_an_unknown_time_zone_is_skipped_and_the_others_fire(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    clock = FrozenClock(datetime(2031, 1, 1, 8, 59, 30, tzinfo=UTC))
    async with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        await app.schedule_async("good", "* * * * *", queue="good")
        await app.schedule_async("poisoned", "* * * * *", queue="poisoned")
        _execute(
            conveyor_dsn, conveyor_schema,
            "UPDATE {schema}.schedule SET tz = 'Mars/Olympus_Mons' WHERE name = 'poisoned'",
        )  # fmt: skip
        _execute(
            conveyor_dsn, conveyor_schema,
            "UPDATE {schema}.schedule SET created_at = %s", clock() - timedelta(minutes=5),
        )  # fmt: skip
        store = WorkerStore(conveyor_dsn, conveyor_schema, min_size=0, max_size=2)
        events = Events()
        errors: list[dict[str, object]] = []
        events.on("worker.error")(lambda event: errors.append(event.error or {}))
        context = ServiceContext(store, uuid.uuid4(), events, clock)
        try:
            clock.advance(60)
            scheduler = Scheduler()
            await scheduler.fire_due(context)
            await scheduler.fire_due(context)  # reported once, not on every loop
        finally:
            await store.close()
        assert [j.queue for j in await app.list_jobs_async()] == ["good"]
        assert len(errors) == 1 and errors[0]["schedule"] == "poisoned"
        findings = await app.diagnose_async()
        broken = [f for f in findings if f.check == "schedules"]
        assert [f.severity for f in broken] == ["error"]
        assert "poisoned" in broken[0].message and "Mars/Olympus_Mons" in broken[0].message


async def test_health_reports_a_live_worker_whose_service_is_down(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    store = WorkerStore(conveyor_dsn, app_async.schema, min_size=0, max_size=1)
    worker = uuid.uuid4()
    try:
        await store.worker_register(worker, "host-a", 42, ["q"], 1)
        assert (await app_async.health_async()).ok
        down = {"services_down": {"scheduler": "KeyError: 'x'"}, "stuck_threads": 0}
        assert await store.worker_heartbeat(worker, down)
        report = await app_async.health_async()
        assert not report.ok
        assert report.problems == (
            f"worker {worker} (host-a pid 42): service scheduler down (KeyError: 'x')",
        )
        assert await store.worker_heartbeat(worker, {"services_down": {}, "stuck_threads": 0})
        assert (await app_async.health_async()).ok
    finally:
        await store.close()


# -- 4. a sync handler that ignores its cancellation -----------------------------------------


async def test_a_stuck_sync_handler_does_not_take_its_slot_or_the_next_jobs_attempt(
    app_async: Conveyor,
) -> None:
    release = threading.Event()
    ran: list[str] = []

    @app_async.job("stubborn", expire_in=0.3, retry_limit=0)
    def stubborn(job: Job) -> str:
        ran.append(job.data["name"])
        if job.data["name"] == "first":
            release.wait(20)  # never looks at job.cancelled
        return str(job.data["name"])

    first = await app_async.send_async("stubborn", {"name": "first"})
    try:
        async for _stop, _task in worker_in_background(
            app_async, concurrency=1, prefetch=0, poll_interval=0.05, stale_after=3
        ):
            expired = await app_async.wait_for_async(first, timeout=10)
            assert expired.state is JobState.FAILED
            assert expired.errors[0]["type"] == "Expired"
            second = await app_async.send_async("stubborn", {"name": "second"})
            done = await app_async.wait_for_async(second, timeout=10)
            # It ran at once on a fresh thread: no attempt spent waiting, no expiry.
            assert (done.state, done.result, done.attempt, done.errors) == (
                JobState.COMPLETED, "second", 1, [],
            )  # fmt: skip
            for _ in range(100):  # the next heartbeat (a second at most) reports the stuck thread
                report = await app_async.health_async()
                if not report.ok:
                    break
                await asyncio.sleep(0.05)
            assert any("1 handler thread(s) stuck" in p for p in report.problems)
            release.set()
    finally:
        release.set()
    assert ran == ["first", "second"]


# -- 5. stale_after and the heartbeat --------------------------------------------------------


async def test_a_short_stale_after_never_takes_a_healthy_worker_for_dead(
    app_async: Conveyor,
) -> None:
    @app_async.job("slow")
    async def slow(job: Job) -> int:
        await asyncio.sleep(2.5)
        return job.attempt

    job_id = await app_async.send_async("slow", {})
    async for _stop, _task in worker_in_background(
        app_async, stale_after=1, recover_interval=0.2, poll_interval=0.1
    ):
        done = await app_async.wait_for_async(job_id, timeout=15)
    assert (done.state, done.result, done.errors) == (JobState.COMPLETED, 1, [])


async def test_a_heartbeat_slower_than_half_stale_after_is_refused(app_async: Conveyor) -> None:
    @app_async.job("q")
    async def noop(job: Job) -> None:
        return None

    with pytest.raises(InvalidOption, match="heartbeat_interval"):
        await app_async.run_worker_async(stale_after=2, heartbeat_interval=5, burst=True)


# -- 12. a result too large to store ---------------------------------------------------------


async def test_a_result_too_large_fails_at_once_naming_its_size_and_the_limit(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    runs = 0
    async with Conveyor(conveyor_dsn, schema=conveyor_schema, max_payload_bytes=1000) as app:

        @app.job("big", retry_limit=3, retry_delay=0)
        async def big(job: Job) -> str:
            nonlocal runs
            runs += 1
            return "x" * 5000

        job_id = await app.send_async("big", {})
        await app.drain_async()
        job = await app.get_job_async(job_id)
    assert (job.state, runs, job.attempt) == (JobState.FAILED, 1, 1)
    assert job.errors[0]["type"] == "ResultNotStorable"
    assert "5002" in job.errors[0]["message"] and "1000" in job.errors[0]["message"]


# -- the rescue bound holds when the dead worker held the maintenance lease -------------------


async def test_the_jobs_of_a_dead_lease_holder_are_recovered_within_the_documented_bound(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    @app_async.job("q", retry_delay=0)
    async def noop(job: Job) -> int:
        return job.attempt

    job_id = await app_async.send_async("q", {})
    store = WorkerStore(conveyor_dsn, app_async.schema, min_size=0, max_size=1)
    dead = uuid.uuid4()
    try:
        # A worker that claimed the job and holds the maintenance lease for another minute, then
        # died (SIGKILL): its heartbeat stops.
        await store.worker_register(dead, "gone", 1, ["q"], 1)
        assert len(await store.job_fetch(["q"], dead, 1, None)) == 1
        assert await store.leader_acquire("maintenance", dead, 60, 30)
        _execute(
            conveyor_dsn, app_async.schema,
            "UPDATE {schema}.worker SET heartbeat_at = now() - interval '2 seconds'",
        )  # fmt: skip
    finally:
        await store.close()
    begin = time.monotonic()
    stale_after, recover_interval = 1.0, 0.2
    async for _stop, _task in worker_in_background(
        app_async, stale_after=stale_after, recover_interval=recover_interval, poll_interval=0.1
    ):
        done = await app_async.wait_for_async(job_id, timeout=30)
    took = time.monotonic() - begin
    assert (done.state, done.result) == (JobState.COMPLETED, 2)
    assert done.errors[0]["type"] == "WorkerLost"
    # Well inside stale_after + 1.5 intervals of slack (plus start-up), never the lease's minute.
    assert took < stale_after + 1.5 * recover_interval + 3


# -- a claim that never started spends no attempt --------------------------------------------


async def test_claims_a_dead_worker_never_started_are_given_back_without_spending_attempts(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    ids = [await app_async.send_async("q", {"n": n}, retry_limit=0) for n in range(4)]
    store = WorkerStore(conveyor_dsn, app_async.schema, min_size=0, max_size=1)
    dead = uuid.uuid4()
    try:
        await store.worker_register(dead, "gone", 1, ["q"], 1)
        claimed = {row[0] for row in await store.job_fetch(["q"], dead, 4, None)}
        assert claimed == set(ids)
        # Its last heartbeat: one job running, three still waiting in its prefetch buffer.
        waiting = ids[1:]
        report = {"services_down": {}, "stuck_threads": 0}
        assert await store.worker_heartbeat(
            dead, {**report, "unstarted": [f"{i}/1" for i in waiting]}
        )
        _execute(
            conveyor_dsn, app_async.schema,
            "UPDATE {schema}.worker SET heartbeat_at = now() - interval '1 hour'",
        )  # fmt: skip
        changed = {c.id: c.state for c in await store.job_recover(30, 30, None)}
    finally:
        await store.close()
    # The running one had its only attempt: dead. The others run again, and the claim they lost
    # does not count: its number is not reused, the budget grows by one instead.
    assert changed == {ids[0]: "failed", **{i: "retry" for i in waiting}}
    for job_id in waiting:
        job = await app_async.get_job_async(job_id)
        assert (job.state, job.attempt, job.retry_limit) == (JobState.RETRY, 1, 1)
        assert [e["type"] for e in job.errors] == ["ClaimReleased"]
    assert (await app_async.get_job_async(ids[0])).errors[0]["type"] == "WorkerLost"


async def test_a_claim_given_back_max_attempts_times_counts_after_all(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    """A job that kills its worker right after a heartbeat listed it as waiting must still reach
    the dead letters: a claim is given back at most max_attempts times."""
    job_id = await app_async.send_async("q", {}, retry_limit=1)
    store = WorkerStore(conveyor_dsn, app_async.schema, min_size=0, max_size=1)
    states = []
    try:
        for _ in range(5):
            dead = uuid.uuid4()
            await store.worker_register(dead, "gone", 1, ["q"], 1)
            [row] = await store.job_fetch(["q"], dead, 1, None)
            report = {"services_down": {}, "stuck_threads": 0, "unstarted": [f"{job_id}/{row[5]}"]}
            assert await store.worker_heartbeat(dead, report)
            _execute(
                conveyor_dsn, app_async.schema,
                "UPDATE {schema}.worker SET heartbeat_at = now() - interval '1 hour'",
            )  # fmt: skip
            states += [c.state for c in await store.job_recover(30, 30, None)]
            if states[-1] == "failed":
                break
    finally:
        await store.close()
    # Given back twice (max_attempts = 2), then counted: retried once, then dead.
    assert states == ["retry", "retry", "retry", "failed"]
    job = await app_async.get_job_async(job_id)
    assert [e["type"] for e in job.errors] == [
        "ClaimReleased", "ClaimReleased", "WorkerLost", "WorkerLost"
    ]  # fmt: skip
    assert [e["attempt"] for e in job.errors] == [1, 2, 3, 4]  # no attempt number twice


async def test_a_passing_error_on_an_ack_writes_the_same_outcome_again(
    app_async: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadlock or a cancelled statement says nothing about the values: the batch is written
    again as it was, never turned into a failure of its jobs."""
    original = WorkerStore._fetch
    cancelled = 0

    async def cancel_first_ack(self: WorkerStore, name: str, *args: object) -> list[object]:
        nonlocal cancelled
        if name in ("job_ack_many", "job_ack_fetch") and cancelled < 2:
            cancelled += 1
            raise psycopg.errors.QueryCanceled("canceling statement due to user request")
        return await original(self, name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(WorkerStore, "_fetch", cancel_first_ack)

    @app_async.job("q")
    async def noop(job: Job) -> int:
        return 7

    ids = [await app_async.send_async("q", {}) for _ in range(3)]
    async for _stop, _task in worker_in_background(app_async, poll_interval=0.1, concurrency=1):
        done = await asyncio.gather(*(app_async.wait_for_async(i, timeout=10) for i in ids))
    assert cancelled == 2
    assert [(j.state, j.result, j.errors) for j in done] == [(JobState.COMPLETED, 7, [])] * 3


# -- a claim whose answer was lost -----------------------------------------------------------


async def test_a_job_claimed_in_a_live_workers_name_but_never_received_is_handed_back(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    """A fetch can commit and its answer be lost with the connection: the worker holds jobs it
    does not know of. Its heartbeat hands them back unstarted, long before their expire_in,
    and never takes the jobs it runs or keeps in its buffer for such."""

    @app_async.job("q")
    async def slow(job: Job) -> int:
        await asyncio.sleep(0.8)
        return job.attempt

    known = [await app_async.send_async("q", {"n": n}) for n in range(3)]
    lost = await app_async.send_async("other", {}, expire_in=3600)
    store = WorkerStore(conveyor_dsn, app_async.schema, min_size=0, max_size=1)
    try:
        async for _stop, _task in worker_in_background(
            app_async, concurrency=1, prefetch=5, heartbeat_interval=0.2, poll_interval=0.1
        ):
            while not (workers := await app_async.list_workers_async()):
                await asyncio.sleep(0.02)
            # The claim the worker never heard of: a job of a queue it does not even serve,
            # claimed in its name.
            [row] = await store.job_fetch(["other"], workers[0].id, 1, None)
            assert row[0] == lost
            deadline = time.monotonic() + 10
            while (job := await app_async.get_job_async(lost)).state is JobState.ACTIVE:
                assert time.monotonic() < deadline, "the lost claim was never handed back"
                await asyncio.sleep(0.05)
            done = [await app_async.wait_for_async(i, timeout=15) for i in known]
    finally:
        await store.close()
    # Handed back unstarted: the attempt is not spent and no error is recorded.
    assert (job.state, job.attempt, job.errors, job.worker_id) == (JobState.CREATED, 0, [], None)
    # The jobs it ran and buffered across many heartbeats were never taken for lost ones.
    assert [(d.state, d.result, d.errors) for d in done] == [(JobState.COMPLETED, 1, [])] * 3


async def test_a_burst_drain_runs_the_claims_it_holds_before_it_calls_the_queue_empty(
    app_async: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claims wait in the buffer while the heartbeat is not recent (as under a loaded machine):
    a drain that finds nothing more to claim still runs them, instead of ending and handing
    them back unrun."""
    ran: list[int] = []

    @app_async.job("q")
    async def record(job: Job) -> None:
        ran.append(job.data["n"])

    for n in range(6):
        await app_async.send_async("q", {"n": n})
    fresh_after = time.monotonic() + 0.5
    monkeypatch.setattr(WorkerState, "claims_fresh", lambda self: time.monotonic() > fresh_after)
    count = await app_async.run_worker_async(
        ["q"], 1, prefetch=10, burst=True, heartbeat_interval=0.1
    )
    assert (count, sorted(ran)) == (6, list(range(6)))
