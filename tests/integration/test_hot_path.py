"""The hot path's shortcuts (issue 14) do what the general path does, with fewer statements."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC
from typing import Any

import pytest

from conveyor import Conveyor, Job, JobState
from conveyor._store.worker_store import Ack, WorkerStore
from conveyor.worker import producer
from conveyor.worker.completer import Completer
from tests.integration.test_worker import worker_in_background


def record_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The named statements the worker's store runs, in order, from now on."""
    names: list[str] = []
    original = WorkerStore._fetch

    async def recording(self: WorkerStore, name: str, *args: Any) -> list[Any]:
        names.append(name)
        return await original(self, name, *args)

    monkeypatch.setattr(WorkerStore, "_fetch", recording)
    return names


def test_a_busy_worker_writes_a_batchs_outcomes_with_its_next_claim(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.job("fold.q")
    async def handle(job: Job) -> int:
        return int(job.data["i"])

    ids = [app.send("fold.q", {"i": i}) for i in range(40)]
    names = record_statements(monkeypatch)
    assert app.drain(concurrency=2, prefetch=2) == 40
    assert "job_ack_fetch" in names
    jobs = [app.get_job(i) for i in ids]
    assert [(j.state, j.result) for j in jobs] == [(JobState.COMPLETED, i) for i in range(40)]


async def test_a_refused_outcome_in_a_folded_batch_fails_only_its_job(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    """The database refuses the whole statement (a delay past the timestamp range): the
    outcomes are written the slow way, which isolates the bad one, and the claim goes alone."""
    ids = [await app_async.send_async("fold.bad", {"n": n}) for n in range(5)]
    store = WorkerStore(conveyor_dsn, app_async.schema, min_size=0, max_size=1)
    worker = uuid.uuid4()
    written: list[tuple[str, str | None]] = []
    try:
        await store.worker_register(worker, "test", 1, ["fold.bad"], 5)
        assert len(await store.job_fetch(["fold.bad"], worker, 5, None)) == 5
        later = [await app_async.send_async("fold.bad", {"n": n}) for n in range(3)]
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
        claimed = await completer.fetch(["fold.bad"], 3)
    finally:
        await store.close()
    assert sorted(row[0] for row in claimed) == sorted(later)
    states = {i: (await app_async.get_job_async(i)).state for i in ids}
    assert [states[i] for i in ids if i != ids[2]] == [JobState.COMPLETED] * 4
    bad = await app_async.get_job_async(ids[2])
    assert bad.state is JobState.RETRY
    assert bad.errors[-1]["type"] == "OutcomeRefused"
    assert sorted(written) == [("completed", "completed")] * 4 + [("retry", "retry")]


async def _start_delay(app: Conveyor, send_first: bool) -> float:
    """How long after its due time a job sent with start_after=1 starts on an idle worker that
    polls only every 30 s (so only a wake-up can start it on time)."""
    started: list[float] = []

    @app.job("due.q")
    async def handle(job: Job) -> None:
        started.append(time.monotonic())

    due = 0.0
    if send_first:
        due = time.monotonic() + 1.0
        await app.send_async("due.q", {}, start_after=1.0)
    async for _stop, _task in worker_in_background(app, poll_interval=30):
        await asyncio.sleep(0.3)  # the worker has looked and found nothing due
        if not send_first:
            due = time.monotonic() + 1.0
            await app.send_async("due.q", {}, start_after=1.0)
        deadline = time.monotonic() + 10
        while not started and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert started, "the job never started"
    return started[0] - due


async def test_a_job_sent_with_start_after_to_an_idle_worker_starts_when_due(
    app_async: Conveyor,
) -> None:
    late = await _start_delay(app_async, send_first=False)
    assert -0.05 < late < 0.5, f"started {late:+.3f}s from its due time"


async def test_a_worker_starting_with_only_future_jobs_wakes_when_the_first_falls_due(
    app_async: Conveyor,
) -> None:
    late = await _start_delay(app_async, send_first=True)
    assert -0.05 < late < 0.5, f"started {late:+.3f}s from its due time"


def test_a_claim_carries_the_errors_of_earlier_attempts_and_none_for_a_first(
    app: Conveyor,
) -> None:
    """The claim sends no error list for a job that never failed; a retried one gets its own."""
    seen: list[list[str]] = []

    @app.job("again.q", retry_delay=0)
    def handle(job: Job) -> None:
        seen.append([e["type"] for e in job.errors])
        if job.attempt == 1:
            raise ValueError("first")

    app.send("again.q", {})
    assert app.drain() == 2
    assert seen == [[], ["ValueError"]]


async def test_scheduled_jobs_falling_due_one_after_another_each_start_when_due(
    app_async: Conveyor,
) -> None:
    """After the first one starts (a fetch that found something), the worker still wakes for
    the next; bench.ab's start_after scenario found the second ones waiting for the poll."""
    started: dict[int, float] = {}

    @app_async.job("due.many")
    async def handle(job: Job) -> None:
        started[job.data["n"]] = time.monotonic()

    async for _stop, _task in worker_in_background(app_async, poll_interval=30):
        await asyncio.sleep(0.3)
        base = time.monotonic()
        for n, after in enumerate((0.6, 1.2, 1.8)):
            await app_async.send_async("due.many", {"n": n}, start_after=after)
        deadline = time.monotonic() + 10
        while len(started) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    lateness = {n: started[n] - (base + after) for n, after in enumerate((0.6, 1.2, 1.8))
                if n in started}  # fmt: skip
    assert len(lateness) == 3 and all(-0.05 < late < 0.5 for late in lateness.values()), lateness


async def test_a_worker_kept_busy_by_sends_looks_up_the_next_due_time_at_most_every_spacing(
    app_async: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each send wakes the idle worker and its fetch comes back short: the next due time is
    asked once per NEXT_DUE_SPACING, not after every fetch, and a job scheduled meanwhile still
    starts when due."""
    monkeypatch.setattr(producer, "NEXT_DUE_SPACING", 0.5)
    names = record_statements(monkeypatch)
    started: list[float] = []

    @app_async.job("spaced.q")
    async def handle(job: Job) -> None:
        started.append(time.monotonic())

    async for _stop, _task in worker_in_background(app_async, poll_interval=30):
        await asyncio.sleep(0.3)
        begin = time.monotonic()
        for _ in range(40):
            await app_async.send_async("spaced.q", {})
            await asyncio.sleep(0.025)
        elapsed = time.monotonic() - begin
        due = time.monotonic() + 0.8
        await app_async.send_async("spaced.q", {}, start_after=0.8)
        deadline = time.monotonic() + 10
        while len(started) < 41 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    fetches = names.count("job_fetch") + names.count("job_ack_fetch")
    asked = names.count("job_next_due")
    assert len(started) == 41
    assert fetches >= 20, names
    assert asked <= elapsed / 0.5 + 4, (asked, fetches)
    assert started[-1] - due < 0.5 + 0.3


def test_a_worker_reads_its_claims_in_a_utc_session(app: Conveyor) -> None:
    """psycopg's fast path for timestamps needs the session in UTC, not merely a zone that is
    UTC (this server's default is Etc/UTC): the claimed job's datetimes carry datetime.UTC."""
    seen: list[object] = []

    @app.job("utc.q")
    def handle(job: Job) -> None:
        seen.extend([job.created_at.tzinfo, job.run_at.tzinfo])

    app.send("utc.q", {})
    assert app.drain() == 1
    assert seen == [UTC, UTC]


def test_calls_one_after_another_reuse_the_connection_returned_last(app: Conveyor) -> None:
    # After a burst has opened a second connection, a round-robin pool would alternate the two
    # (each call slower, see connections.newest_first); the newest one is reused instead.
    store = app._stores.store()
    with store.connection() as outer:
        with store.connection() as inner:
            assert inner is not outer
        pid = outer.info.backend_pid
    for _ in range(3):
        with store.connection() as conn:
            assert conn.info.backend_pid == pid
            conn.execute("SELECT 1")


async def test_async_calls_one_after_another_reuse_the_connection_returned_last(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    async with Conveyor(conveyor_dsn, schema=conveyor_schema) as app:
        store = app._stores.store_async()
        async with store.connection() as outer:
            async with store.connection() as inner:
                assert inner is not outer
            pid = outer.info.backend_pid
        for _ in range(3):
            async with store.connection() as conn:
                assert conn.info.backend_pid == pid
                await conn.execute("SELECT 1")


def test_a_worker_of_quick_jobs_claims_the_next_batch_while_the_last_one_runs(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handlers that never suspend must not keep the producer from claiming until the buffer
    is empty: the database would claim while this process waits, then this process would run
    jobs while the database waits. The next claim goes while jobs of the last one remain."""
    buffered: list[int] = []
    original = producer.Producer._claim

    async def claim(self: producer.Producer, room: int) -> list[tuple[Any, ...]]:
        buffered.append(len(self._state.buffer))
        return await original(self, room)

    monkeypatch.setattr(producer.Producer, "_claim", claim)

    @app.job("pipelined.q")
    async def handle(job: Job) -> None:
        pass

    app.send_batch([("pipelined.q", {"i": i}) for i in range(4000)])
    assert app.drain(concurrency=10) == 4000
    later = buffered[3:]  # the first fetches come before the average job time is known
    assert len(later) >= 10, buffered
    assert sum(1 for n in later if n > 0) >= len(later) * 0.75, buffered


async def test_a_slot_freed_beside_long_jobs_takes_the_next_job_at_once(
    app_async: Conveyor,
) -> None:
    """After a full fetch the producer waits for half its room, to keep fetches batched; but a
    slot that would sit idle (the buffer holds less than a job per slot) is filled at once, not
    when long jobs in the other slots end."""
    started: dict[str, float] = {}
    ended: dict[str, float] = {}

    @app_async.job("beside.q")
    async def handle(job: Job) -> None:
        started[job.data["name"]] = time.monotonic()
        await asyncio.sleep(job.data["seconds"])
        ended[job.data["name"]] = time.monotonic()

    first = [("quick", 0.05), ("long1", 1.5), ("long2", 1.5), ("long3", 1.5)]
    for name, seconds in first:  # the first fetch takes these four, by priority
        await app_async.send_async("beside.q", {"name": name, "seconds": seconds}, priority=5)
    await app_async.send_async("beside.q", {"name": "next", "seconds": 0})
    async for _stop, _task in worker_in_background(
        app_async, concurrency=4, prefetch=0, poll_interval=30
    ):
        deadline = time.monotonic() + 10
        while "next" not in started and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert "next" in started
    assert started["next"] - ended["quick"] < 0.75, (started, ended)
