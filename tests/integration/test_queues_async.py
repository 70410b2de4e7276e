"""Queue management against a real PostgreSQL (async; the sync twin is generated)."""

from __future__ import annotations

import pytest

from conveyor import (
    Conveyor,
    InvalidOption,
    InvalidQueueName,
    JobNotFound,
    JobState,
    QueueNotFound,
    QueuePolicy,
    UnknownOption,
)


async def test_queues_are_created_on_first_send(app_async: Conveyor) -> None:
    await app_async.send_async("implicit", {})
    queue = await app_async.get_queue_async("implicit")
    assert queue.name == "implicit"
    assert queue.policy is QueuePolicy.STANDARD
    assert queue.retry_limit is None and queue.concurrency is None


async def test_create_queue_with_policy(app_async: Conveyor) -> None:
    queue = await app_async.create_queue_async(
        "reports",
        policy="stately",
        priority=3,
        retry_limit=1,
        retry_delay=2.5,
        retry_backoff="linear",
        retry_delay_max=60,
        expire_in=30,
        retention=86400,
        dead_letter="reports.dead",
        concurrency=4,
        rate_limit=(10, 60),
    )
    assert queue.policy is QueuePolicy.STATELY
    assert (queue.priority, queue.retry_limit, queue.retry_delay) == (3, 1, 2.5)
    assert (queue.retry_backoff, queue.retry_delay_max, queue.expire_in) == ("linear", 60, 30)
    assert (queue.retention, queue.dead_letter, queue.concurrency) == (86400, "reports.dead", 4)
    assert (queue.rate_limit, queue.rate_interval) == (10, 60)
    assert await app_async.get_queue_async("reports") == queue


async def test_create_queue_again_sets_only_what_it_names(app_async: Conveyor) -> None:
    await app_async.create_queue_async("q", retry_limit=1, concurrency=2)
    again = await app_async.create_queue_async("q", concurrency=5)
    assert (again.retry_limit, again.concurrency) == (1, 5)


async def test_update_queue(app_async: Conveyor) -> None:
    await app_async.create_queue_async("q", retry_limit=1, rate_limit=5)
    updated = await app_async.update_queue_async("q", retry_limit=None, policy="short")
    assert updated.retry_limit is None
    assert updated.policy is QueuePolicy.SHORT
    assert (updated.rate_limit, updated.rate_interval) == (5, 1)
    cleared = await app_async.update_queue_async("q", rate_limit=None)
    assert cleared.rate_limit is None and cleared.rate_interval is None
    with pytest.raises(QueueNotFound):
        await app_async.update_queue_async("missing", retry_limit=1)


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"policy": "fifo"}, InvalidOption),
        ({"concurrency": 0}, InvalidOption),
        ({"rate_limit": (5, 0)}, InvalidOption),
        ({"retry_limit": -2}, InvalidOption),
        ({"dead_letter": "no way"}, InvalidQueueName),
        ({"concurency": 3}, UnknownOption),
    ],
)
async def test_bad_queue_options(
    app_async: Conveyor, options: dict[str, object], error: type
) -> None:
    with pytest.raises(error):
        await app_async.create_queue_async("q", **options)
    assert await app_async.list_queues_async() == []


async def test_bad_queue_names(app_async: Conveyor) -> None:
    for call in (
        app_async.create_queue_async,
        app_async.get_queue_async,
        app_async.delete_queue_async,
        app_async.purge_queue_async,
    ):
        with pytest.raises(InvalidQueueName):
            await call("no good")  # type: ignore[operator]


async def test_list_and_get_queues(app_async: Conveyor) -> None:
    await app_async.create_queue_async("b")
    await app_async.send_async("a", {})
    assert [q.name for q in await app_async.list_queues_async()] == ["a", "b"]
    with pytest.raises(QueueNotFound):
        await app_async.get_queue_async("c")


async def test_purge_deletes_only_queued_jobs(app_async: Conveyor) -> None:
    queued = await app_async.send_batch_async([("q", {"n": n}) for n in range(3)])
    finished = await app_async.send_async("q", {})
    await app_async.cancel_async(finished)
    other = await app_async.send_async("other", {})
    assert await app_async.purge_queue_async("q") == 3
    for job_id in queued:
        with pytest.raises(JobNotFound):
            await app_async.get_job_async(job_id)
    assert (await app_async.get_job_async(finished)).state is JobState.CANCELLED
    assert (await app_async.get_job_async(other)).state is JobState.CREATED
    with pytest.raises(QueueNotFound):
        await app_async.purge_queue_async("missing")


async def test_delete_queue_removes_it_and_its_jobs(app_async: Conveyor) -> None:
    keep = await app_async.send_async("keep", {})
    await app_async.send_batch_async([("gone", {}), ("gone", {})])
    await app_async.cancel_async(await app_async.send_async("gone", {}))
    assert await app_async.delete_queue_async("gone") == 3
    assert [q.name for q in await app_async.list_queues_async()] == ["keep"]
    assert (await app_async.get_job_async(keep)).state is JobState.CREATED
    with pytest.raises(QueueNotFound):
        await app_async.delete_queue_async("gone")


async def test_queue_stats(app_async: Conveyor) -> None:
    await app_async.send_batch_async([("q", {}), ("q", {}), ("q", {}, {"start_after": 3600})])
    await app_async.cancel_async(await app_async.send_async("q", {}))
    await app_async.send_async("r", {})
    stats = await app_async.queue_stats_async("q")
    assert stats.queue == "q"
    assert stats.counts[JobState.CREATED] == 3
    assert stats.counts["cancelled"] == 1
    assert stats.counts[JobState.FAILED] == 0
    assert stats.queued == 3
    assert stats.oldest_waiting_seconds is not None and 0 <= stats.oldest_waiting_seconds < 60
    everything = await app_async.queue_stats_async()
    assert [s.queue for s in everything] == ["q", "r"]
    assert everything[1].counts[JobState.CREATED] == 1
    await app_async.create_queue_async("empty")
    empty = await app_async.queue_stats_async("empty")
    assert sum(empty.counts.values()) == 0 and empty.oldest_waiting_seconds is None
    with pytest.raises(QueueNotFound):
        await app_async.queue_stats_async("missing")
