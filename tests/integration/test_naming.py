"""One word, one meaning: ``failed`` is the state of a job whose last attempt failed (it stands
in the dead letters); a single failed attempt is ``job.attempt_failed``. Recovery of a dead
worker's jobs says the same, naming the job it took back."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from typing import Any

import pytest

from conveyor import Conveyor, Job, JobState
from conveyor._store.worker_store import WorkerStore
from conveyor.events import EVENTS, Event


def test_failed_is_said_once_per_job_and_attempt_failed_once_per_attempt(app: Conveyor) -> None:
    seen: list[Event] = []
    for name in EVENTS:
        app.on(name)(seen.append)

    @app.job("flaky", retry_limit=2, retry_delay=0)
    def flaky(job: Job) -> None:
        raise ValueError(f"attempt {job.attempt}")

    job_id = app.send("flaky", {})
    app.drain()
    assert app.get_job(job_id).state == JobState.FAILED
    counts = Counter(event.name for event in seen)
    assert counts == {
        "job.started": 3,
        "job.attempt_failed": 3,
        "job.retried": 2,
        "job.failed": 1,
        "job.dead": 1,
    }
    [failed] = [event for event in seen if event.name == "job.failed"]
    assert failed.job is not None and failed.job.id == job_id and failed.job.attempt == 3
    assert failed.error is not None and failed.error["message"] == "attempt 3"
    # The last attempt's failure comes before the job's.
    names = [event.name for event in seen]
    assert names.index("job.failed") > max(
        i for i, name in enumerate(names) if name == "job.attempt_failed"
    )


async def test_recovery_names_the_job_it_took_back(
    app_async: Conveyor, conveyor_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Event] = []
    for name in ("job.attempt_failed", "job.retried", "job.failed", "job.dead"):
        app_async.on(name)(seen.append)
    done = asyncio.Event()

    @app_async.job("orphan", retry_limit=1)
    async def orphan(job: Job) -> None:
        done.set()

    job_id = await app_async.send_async("orphan", {})
    ghost = uuid.uuid4()  # a worker that claimed the job, then died: it has no heartbeat row
    store = WorkerStore(conveyor_dsn, app_async.schema, min_size=0, max_size=1)
    try:
        [claimed] = await store.job_fetch(["orphan"], ghost, 1, None)
        assert claimed[0] == job_id
    finally:
        await store.close()
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="conveyor.job")
    worker = asyncio.create_task(
        app_async.run_worker_async(
            stop=stop, poll_interval=0.1, stale_after=1, recover_interval=0.2
        )
    )
    try:
        await asyncio.wait_for(done.wait(), 15)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
    taken_back = [(e.name, e.job_id, e.queue) for e in seen if e.job is None]
    assert taken_back == [
        ("job.attempt_failed", job_id, "orphan"),
        ("job.retried", job_id, "orphan"),
    ]
    lines: list[dict[str, Any]] = [
        vars(r) for r in caplog.records if getattr(r, "job_id", None) == str(job_id)
    ]
    assert [(line["_summary"], line.get("recovered")) for line in lines] == [
        ("attempt failed", True),
        ("job retried", True),
    ]
    assert all(line["queue"] == "orphan" for line in lines)
    assert [r.getMessage() for r in caplog.records if getattr(r, "job_id", None)] == [
        f"job {job_id} (queue orphan) its attempt failed: taken back by recovery (its worker "
        "stopped sending heartbeats, or it ran far past expire_in)",
        f"job {job_id} (queue orphan) queued again after its attempt failed",
    ]
