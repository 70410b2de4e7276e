"""Bulk actions by filter: cancel, retry, delete and reprioritize every job a filter matches, in
bounded batches, with a dry run first; running jobs are told; bad input changes nothing."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest

from conveyor import Conveyor, Fail, FrozenClock, InvalidOption, Job, JobState
from conveyor.errors import InvalidQueueName


def states(app: Conveyor, queue: str) -> dict[str, int]:
    counts = app.queue_stats(queue).counts
    return {state.value: n for state, n in counts.items() if n}


def test_a_dry_run_counts_and_changes_nothing_then_the_cancel_changes_exactly_those(
    app: Conveyor,
) -> None:
    app.send_batch([("mail", {"tenant": "acme", "n": n}) for n in range(5)])
    app.send_batch([("mail", {"tenant": "other", "n": n}) for n in range(3)])
    app.send("sms", {"tenant": "acme"})
    dry = app.bulk_jobs("cancel", queue="mail", search='"acme"', dry_run=True)
    assert (dry.action, dry.dry_run, dry.matched, dry.affected) == ("cancel", True, 5, 0)
    assert states(app, "mail") == {"created": 8}
    done = app.bulk_jobs("cancel", queue="mail", search='"acme"')
    assert (done.dry_run, done.matched, done.affected) == (False, 5, 5)
    assert states(app, "mail") == {"created": 3, "cancelled": 5}
    assert states(app, "sms") == {"created": 1}
    cancelled = app.list_jobs("mail", "cancelled")
    assert {j.data["tenant"] for j in cancelled} == {"acme"}


def test_a_filter_matching_several_batches_changes_every_job_batch_by_batch(
    app: Conveyor,
) -> None:
    app.send_batch([("big", {"n": n}) for n in range(2500)])
    seen: list[int] = []
    done = app.bulk_jobs("reprioritize", queue="big", priority=7, batch_size=1000,
                         progress=seen.append)  # fmt: skip
    assert (done.matched, done.affected) == (2500, 2500)
    assert seen == [1000, 2000, 2500]
    assert {j.priority for j in app.list_jobs("big", limit=10_000)} == {7}


def test_retry_brings_queued_jobs_forward_and_requeues_failed_and_cancelled_ones(
    app: Conveyor,
) -> None:
    @app.job("work")
    def work(job: Job) -> None:
        raise Fail("no")

    failed = [app.send("work", {"n": n}) for n in range(3)]
    assert app.drain() == 3
    later = app.send("work", {"n": 9}, start_after=3600)
    cancelled = app.send("work", {"n": 10}, start_after=3600)
    app.cancel(cancelled)
    done = app.bulk_jobs("retry", queue="work")
    assert (done.matched, done.affected) == (5, 5)
    for job_id in [*failed, later, cancelled]:
        job = app.get_job(job_id)
        assert (job.state, job.attempt) == (JobState.CREATED, 0)
        assert job.run_at <= app.get_job(failed[0]).run_at + timedelta(seconds=5)
    assert len(app.get_job(failed[0]).errors) == 1  # the error history is kept


def test_retrying_dead_letters_only_by_state_and_a_held_unique_key_blocks_no_batch(
    app: Conveyor,
) -> None:
    @app.job("keyed")
    def keyed(job: Job) -> None:
        raise Fail("no")

    held = app.send("keyed", {"n": 1}, unique_key="k1")
    free = app.send("keyed", {"n": 2}, unique_key="k2")
    assert app.drain() == 2
    holder = app.send("keyed", {"n": 3}, unique_key="k1")  # a live job takes k1 again
    app.send("keyed", {"n": 4}, start_after=3600)
    done = app.bulk_jobs("retry", queue="keyed", state=["failed"], batch_size=1)
    assert (done.matched, done.affected) == (2, 1)
    assert app.get_job(held).state is JobState.FAILED
    assert app.get_job(free).state is JobState.CREATED
    assert app.get_job(holder).state is JobState.CREATED


def test_delete_removes_queued_and_finished_jobs_but_never_a_running_one(
    app: Conveyor,
) -> None:
    @app.job("tidy")
    def tidy(job: Job) -> None:
        return None

    app.send_batch([("tidy", {"n": n}) for n in range(3)])
    assert app.drain() == 3
    app.send_batch([("tidy", {"n": n}) for n in range(3, 5)])
    with pytest.raises(InvalidOption, match="not active"):
        app.bulk_jobs("delete", queue="tidy", state="active")
    done = app.bulk_jobs("delete", queue="tidy", state=["completed", "created"])
    assert (done.matched, done.affected) == (5, 5)
    assert states(app, "tidy") == {}


def test_older_than_and_group_key_narrow_the_filter(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    clock = FrozenClock()
    with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        old = [app.send("sync", {"n": n}, group_key="acme") for n in range(2)]
        clock.advance(timedelta(hours=2))
        new = app.send("sync", {"n": 2}, group_key="acme")
        other = app.send("sync", {"n": 3}, group_key="other")
        done = app.bulk_jobs("delete", queue="sync", older_than=3600)
        assert (done.matched, done.affected) == (2, 2)
        assert {j.id for j in app.list_jobs("sync")} == {new, other}
        assert not set(old) & {j.id for j in app.list_jobs("sync")}
        assert app.bulk_jobs("cancel", group_key="acme").affected == 1
        assert app.get_job(new).state is JobState.CANCELLED
        assert app.get_job(other).state is JobState.CREATED


@pytest.mark.parametrize(
    ("action", "options", "error", "message"),
    [
        ("archive", {"queue": "q"}, InvalidOption, "action must be one of"),
        ("cancel", {}, InvalidOption, "needs a filter"),
        ("cancel", {"state": "completed"}, InvalidOption, "not completed"),
        ("cancel", {"state": "nonsense"}, InvalidOption, "state must be one of"),
        ("cancel", {"state": []}, InvalidOption, "at least one"),
        ("retry", {"state": "active"}, InvalidOption, "not active"),
        ("cancel", {"queue": "bad name!"}, InvalidQueueName, "queue"),
        ("cancel", {"older_than": -1}, InvalidOption, "older_than"),
        ("cancel", {"search": ""}, InvalidOption, "search"),
        ("cancel", {"group_key": ""}, InvalidOption, "group_key"),
        ("cancel", {"queue": "q", "priority": 3}, InvalidOption, "reprioritize action only"),
        ("reprioritize", {"queue": "q"}, InvalidOption, "priority"),
        ("reprioritize", {"queue": "q", "priority": 2**31}, InvalidOption, "priority"),
        ("delete", {"queue": "q", "batch_size": 0}, InvalidOption, "batch_size"),
        ("delete", {"queue": "q", "dry_run": "yes"}, InvalidOption, "dry_run"),
    ],
)
def test_bad_input_raises_a_typed_error_and_changes_nothing(
    app: Conveyor, action: str, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    app.send_batch([("q", {"n": n}) for n in range(3)])
    with pytest.raises(error, match=message):
        app.bulk_jobs(action, **options)
    assert states(app, "q") == {"created": 3}
    assert {j.priority for j in app.list_jobs("q")} == {0}


async def test_a_bulk_cancel_of_running_jobs_tells_their_handlers_at_once(
    app_async: Conveyor,
) -> None:
    running: set[int] = set()
    outcome: list[str] = []

    @app_async.job("long")
    async def long(job: Job) -> None:
        running.add(job.data["n"])
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    await app_async.send_batch_async([("long", {"n": n}) for n in range(3)])
    stop = asyncio.Event()
    task = asyncio.create_task(app_async.run_worker_async(stop=stop, poll_interval=0.05))
    try:
        deadline = time.monotonic() + 10
        while len(running) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(running) == 3
        begin = time.monotonic()
        done = await app_async.bulk_jobs_async("cancel", queue="long", state="active")
        assert (done.matched, done.affected) == (3, 3)
        while len(outcome) < 3 and time.monotonic() - begin < 5:
            await asyncio.sleep(0.01)
        assert outcome == ["cancelled"] * 3
        assert time.monotonic() - begin < 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert (await app_async.queue_stats_async("long")).counts[JobState.CANCELLED] == 3
