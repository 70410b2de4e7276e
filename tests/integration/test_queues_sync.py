# Generated from tests/integration/test_queues_async.py
# by tools/async_to_sync.py: edit that file, not this one.
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


def test_queues_are_created_on_first_send(app: Conveyor) -> None:
    app.send("implicit", {})
    queue = app.get_queue("implicit")
    assert queue.name == "implicit"
    assert queue.policy is QueuePolicy.STANDARD
    assert queue.retry_limit is None and queue.concurrency is None


def test_create_queue_with_policy(app: Conveyor) -> None:
    queue = app.create_queue(
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
    assert app.get_queue("reports") == queue


def test_create_queue_again_sets_only_what_it_names(app: Conveyor) -> None:
    app.create_queue("q", retry_limit=1, concurrency=2)
    again = app.create_queue("q", concurrency=5)
    assert (again.retry_limit, again.concurrency) == (1, 5)


def test_update_queue(app: Conveyor) -> None:
    app.create_queue("q", retry_limit=1, rate_limit=5)
    updated = app.update_queue("q", retry_limit=None, policy="short")
    assert updated.retry_limit is None
    assert updated.policy is QueuePolicy.SHORT
    assert (updated.rate_limit, updated.rate_interval) == (5, 1)
    cleared = app.update_queue("q", rate_limit=None)
    assert cleared.rate_limit is None and cleared.rate_interval is None
    with pytest.raises(QueueNotFound):
        app.update_queue("missing", retry_limit=1)


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
def test_bad_queue_options(app: Conveyor, options: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        app.create_queue("q", **options)
    assert app.list_queues() == []


def test_bad_queue_names(app: Conveyor) -> None:
    for call in (
        app.create_queue,
        app.get_queue,
        app.delete_queue,
        app.purge_queue,
    ):
        with pytest.raises(InvalidQueueName):
            call("no good")  # type: ignore[operator]


def test_list_and_get_queues(app: Conveyor) -> None:
    app.create_queue("b")
    app.send("a", {})
    assert [q.name for q in app.list_queues()] == ["a", "b"]
    with pytest.raises(QueueNotFound):
        app.get_queue("c")


def test_purge_deletes_only_queued_jobs(app: Conveyor) -> None:
    queued = app.send_batch([("q", {"n": n}) for n in range(3)])
    finished = app.send("q", {})
    app.cancel(finished)
    other = app.send("other", {})
    assert app.purge_queue("q") == 3
    for job_id in queued:
        with pytest.raises(JobNotFound):
            app.get_job(job_id)
    assert (app.get_job(finished)).state is JobState.CANCELLED
    assert (app.get_job(other)).state is JobState.CREATED
    with pytest.raises(QueueNotFound):
        app.purge_queue("missing")


def test_delete_queue_removes_it_and_its_jobs(app: Conveyor) -> None:
    keep = app.send("keep", {})
    app.send_batch([("gone", {}), ("gone", {})])
    app.cancel(app.send("gone", {}))
    assert app.delete_queue("gone") == 3
    assert [q.name for q in app.list_queues()] == ["keep"]
    assert (app.get_job(keep)).state is JobState.CREATED
    with pytest.raises(QueueNotFound):
        app.delete_queue("gone")


def test_queue_stats(app: Conveyor) -> None:
    app.send_batch([("q", {}), ("q", {}), ("q", {}, {"start_after": 3600})])
    app.cancel(app.send("q", {}))
    app.send("r", {})
    stats = app.queue_stats("q")
    assert stats.queue == "q"
    assert stats.counts[JobState.CREATED] == 3
    assert stats.counts["cancelled"] == 1
    assert stats.counts[JobState.FAILED] == 0
    assert stats.queued == 3
    assert stats.oldest_waiting_seconds is not None and 0 <= stats.oldest_waiting_seconds < 60
    everything = app.queue_stats()
    assert [s.queue for s in everything] == ["q", "r"]
    assert everything[1].counts[JobState.CREATED] == 1
    app.create_queue("empty")
    empty = app.queue_stats("empty")
    assert sum(empty.counts.values()) == 0 and empty.oldest_waiting_seconds is None
    with pytest.raises(QueueNotFound):
        app.queue_stats("missing")
