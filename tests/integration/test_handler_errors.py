"""What a handler sees and leaves behind: the stored traceback of a failed attempt starts at the
handler's own frames (no error of the worker's event loop chained to it), and ``job.cancelled``
can be tested as a boolean."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from conveyor import Conveyor, Job, JobState


def fail_here_sync(job: Job) -> None:
    raise ValueError("sync handler broke")


async def fail_here_async(job: Job) -> None:
    await asyncio.sleep(0)
    raise ValueError("async handler broke")


def stored_traceback(app: Conveyor, job_id: Any) -> str:
    job = app.get_job(job_id)
    assert job.state == JobState.FAILED
    assert job.error is not None
    trace = job.error["traceback"]
    assert isinstance(trace, str)
    return trace


def first_frame(trace: str) -> str:
    """The first ``File ...`` line of a formatted traceback."""
    return next(line for line in trace.splitlines() if line.lstrip().startswith("File "))


def test_a_failed_async_attempt_keeps_only_the_handlers_traceback(app: Conveyor) -> None:
    app.job("broken.async", fail_here_async, retry_limit=0)
    job_id = app.send("broken.async", {})
    app.drain()  # the sync entry starts the event loop
    trace = stored_traceback(app, job_id)
    assert "no running event loop" not in trace
    assert "During handling of the above exception" not in trace
    assert first_frame(trace).endswith("in fail_here_async")
    assert trace.rstrip().endswith("ValueError: async handler broke")


def test_a_failed_sync_attempt_keeps_only_the_handlers_traceback(app: Conveyor) -> None:
    app.job("broken.sync", fail_here_sync, retry_limit=0)
    job_id = app.send("broken.sync", {})
    app.drain()
    trace = stored_traceback(app, job_id)
    assert "no running event loop" not in trace
    assert "During handling of the above exception" not in trace
    assert first_frame(trace).endswith("in fail_here_sync")
    assert trace.rstrip().endswith("ValueError: sync handler broke")


def test_an_error_inside_drain_is_not_chained_to_the_loop_check(app: Conveyor) -> None:
    """An error of the worker itself (here: no handler for the queue) reaches the caller of the
    sync entry without the RuntimeError of the running-loop check as its context."""
    try:
        app.drain(["nobody.serves.this"])
    except Exception as exc:
        assert exc.__context__ is None, repr(exc.__context__)
    else:
        raise AssertionError("drain of a queue without handler must fail")


def test_job_cancelled_is_false_unless_the_job_is_stopped(app: Conveyor) -> None:
    seen: list[bool] = []

    @app.job("calm")
    def calm(job: Job) -> None:
        seen.append(bool(job.cancelled))
        if job.cancelled:
            raise RuntimeError("told to stop while nothing asked it to")

    job_id = app.send("calm", {})
    app.drain()
    assert seen == [False]
    stored = app.get_job(job_id)
    assert stored.state == JobState.COMPLETED
    assert not stored.cancelled  # a job that is not running is never cancelled


def test_job_cancelled_turns_true_when_the_attempt_expires(app: Conveyor) -> None:
    seen: list[bool] = []

    @app.job("slow", expire_in=0.2, retry_limit=0)
    def slow(job: Job) -> None:
        seen.append(bool(job.cancelled))
        deadline = time.monotonic() + 10
        while not job.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(bool(job.cancelled))

    job_id = app.send("slow", {})
    app.drain()
    assert seen == [False, True]
    assert app.get_job(job_id).error["type"] == "Expired"  # type: ignore[index]


async def _worker(app: Conveyor) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(app.run_worker_async(stop=stop, poll_interval=0.1))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_job_cancelled_turns_true_when_the_job_is_cancelled(app_async: Conveyor) -> None:
    started = threading.Event()
    seen: list[bool] = []

    @app_async.job("patient")
    def patient(job: Job) -> None:
        seen.append(bool(job.cancelled))
        started.set()
        deadline = time.monotonic() + 10
        while not job.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.append(bool(job.cancelled))

    job_id = await app_async.send_async("patient", {})
    async for _stop in _worker(app_async):
        assert await asyncio.to_thread(started.wait, 10)
        await app_async.cancel_async(job_id)
        begin = time.monotonic()
        while len(seen) < 2 and time.monotonic() - begin < 10:
            await asyncio.sleep(0.01)
    assert seen == [False, True]
    assert (await app_async.get_job_async(job_id)).state == JobState.CANCELLED
