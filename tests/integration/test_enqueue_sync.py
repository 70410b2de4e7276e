# Generated from tests/integration/test_enqueue_async.py
# by tools/async_to_sync.py: edit that file, not this one.
"""Enqueue and inspect jobs against a real PostgreSQL.

Written once, async; test_enqueue_sync.py is generated from it by tools/async_to_sync.py, so the
sync and async APIs are held to the same assertions.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import psycopg
import pytest
from psycopg.types.string import TextLoader

from conveyor import (
    Conveyor,
    InvalidOption,
    InvalidQueueName,
    JobNotFound,
    JobState,
    JobStateError,
    PayloadError,
    PayloadTooLarge,
    UnknownOption,
)


def test_send_stores_the_job_with_its_options(app: Conveyor) -> None:
    job_id = app.send(
        "email.send",
        {"to": "a@b.c"},
        priority=5,
        retry_limit=4,
        retry_delay=30,
        retry_backoff=True,
        retry_delay_max=600,
        expire_in=timedelta(minutes=2),
        retention=3600,
        dead_letter="email.dead",
        group_key="customer-1",
    )
    job = app.get_job(job_id)
    assert isinstance(job_id, uuid.UUID)
    assert job.id == job_id
    assert job.queue == "email.send"
    assert job.state is JobState.CREATED
    assert job.data == {"to": "a@b.c"}
    assert (job.priority, job.retry_limit, job.max_attempts) == (5, 4, 5)
    assert (job.retry_delay, job.retry_backoff, job.retry_delay_max) == (30, "exponential", 600)
    assert (job.expire_in, job.retention) == (120, 3600)
    assert (job.dead_letter, job.group_key) == ("email.dead", "customer-1")
    assert job.attempt == 0
    assert job.errors == [] and job.error is None and job.result is None


def test_get_job_accepts_a_string_id(app: Conveyor) -> None:
    job_id = app.send("q", [1, 2, 3])
    assert (app.get_job(str(job_id))).data == [1, 2, 3]


def test_start_after_takes_seconds_timedelta_or_datetime(app: Conveyor) -> None:
    now_id = app.send("q", None)
    base = (app.get_job(now_id)).created_at
    by_seconds = app.get_job(app.send("q", 1, start_after=60))
    by_delta = app.get_job(app.send("q", 2, start_after=timedelta(hours=1)))
    when = datetime(2030, 1, 1, tzinfo=UTC)
    by_date = app.get_job(app.send("q", 3, start_after=when))
    assert abs((by_seconds.run_at - by_seconds.created_at).total_seconds() - 60) < 0.01
    assert abs((by_delta.run_at - by_delta.created_at).total_seconds() - 3600) < 0.01
    assert by_date.run_at == when
    assert by_seconds.created_at >= base


def test_defaults_job_beats_queue_beats_app(conveyor_dsn: str, conveyor_schema: str) -> None:
    with Conveyor(
        conveyor_dsn, schema=conveyor_schema, retry_limit=7, expire_in=60, priority=1
    ) as app:
        app.create_queue("reports", retry_limit=3, priority=2)
        from_queue = app.get_job(app.send("reports", {}))
        from_job = app.get_job(app.send("reports", {}, retry_limit=0))
        from_app = app.get_job(app.send("other", {}))
    assert (from_queue.retry_limit, from_queue.priority, from_queue.expire_in) == (3, 2, 60)
    assert from_job.retry_limit == 0
    assert (from_app.retry_limit, from_app.priority, from_app.expire_in) == (7, 1, 60)


def test_builtin_defaults(app: Conveyor) -> None:
    job = app.get_job(app.send("q", {}))
    assert (job.priority, job.retry_limit, job.retry_delay, job.retry_backoff) == (
        0, 2, 5, "exponential"
    )  # fmt: skip
    assert (job.retry_delay_max, job.expire_in, job.retention) == (3600, 900, 7 * 86400)


def test_send_batch_returns_ids_in_order(app: Conveyor) -> None:
    ids = app.send_batch(
        [("a", {"n": 1}), ("b", {"n": 2}, {"priority": 9}), ("a", {"n": 3}, {"start_after": 5})]
    )
    jobs = [app.get_job(i) for i in ids]
    assert [(j.queue, j.data["n"]) for j in jobs] == [("a", 1), ("b", 2), ("a", 3)]
    assert jobs[1].priority == 9
    assert jobs[2].run_at > jobs[2].created_at
    assert app.send_batch([]) == []


def test_send_batch_of_ten_thousand(app: Conveyor) -> None:
    ids = app.send_batch([("bulk", {"i": i}) for i in range(10_000)])
    assert len(set(ids)) == 10_000
    stats = app.queue_stats("bulk")
    assert stats.counts[JobState.CREATED] == 10_000
    assert (app.get_job(ids[-1])).data == {"i": 9_999}


class CountingCursor(psycopg.Cursor[Any]):
    executed = 0

    def execute(self, *args: Any, **kwargs: Any) -> Self:
        CountingCursor.executed += 1
        return super().execute(*args, **kwargs)


def test_send_batch_is_one_statement(app: Conveyor, conveyor_dsn: str) -> None:
    CountingCursor.executed = 0
    with psycopg.Connection.connect(conveyor_dsn, cursor_factory=CountingCursor) as conn:
        ids = app.send_batch(
            [("bulk", {"i": i}, {"priority": i % 3}) for i in range(10_000)], connection=conn
        )
        assert CountingCursor.executed == 1
        conn.commit()
    assert len(ids) == 10_000


def test_transactional_send_exists_only_if_committed(app: Conveyor, conveyor_dsn: str) -> None:
    with psycopg.Connection.connect(conveyor_dsn) as conn:
        rolled_back = app.send("tx", {"n": 1}, connection=conn)
        batch_rolled_back = app.send_batch([("tx", {"n": 2})], connection=conn)
        conn.rollback()
        committed = app.send("tx", {"n": 3}, connection=conn)
        seen_inside = app.get_job(committed, connection=conn)
        with pytest.raises(JobNotFound):
            app.get_job(committed)  # not visible outside before commit
        conn.commit()
    assert seen_inside.data == {"n": 3}
    assert (app.get_job(committed)).data == {"n": 3}
    for job_id in [rolled_back, *batch_rolled_back]:
        with pytest.raises(JobNotFound):
            app.get_job(job_id)


def test_a_callers_connection_that_loads_json_as_text_still_reads_json_values(
    app: Conveyor, conveyor_dsn: str
) -> None:
    """Django's connections load jsonb as text (its JSONField decodes it); what Conveyor reads
    on such a connection comes back as JSON values all the same, and the connection keeps its
    own loaders."""
    job_id = app.send("tx", {"n": 1})
    with psycopg.Connection.connect(conveyor_dsn) as conn:
        conn.adapters.register_loader("jsonb", TextLoader)
        job = app.get_job(job_id, connection=conn)
        cur = conn.execute("SELECT '{\"a\": 1}'::jsonb")
        assert cur.fetchone() == ('{"a": 1}',)
    assert job.data == {"n": 1}
    assert job.errors == []


def test_unique_key_keep_returns_the_holder(app: Conveyor) -> None:
    first = app.send("u", {"v": 1}, unique_key="k")
    second = app.send("u", {"v": 2}, unique_key="k")
    other_queue = app.send("u2", {"v": 3}, unique_key="k")
    assert first == second != other_queue
    assert (app.get_job(first)).data == {"v": 1}


def test_unique_key_replace_updates_the_queued_job(app: Conveyor) -> None:
    first = app.send("u", {"v": 1}, unique_key="k")
    again = app.send("u", {"v": 2}, unique_key="k", unique_mode="replace", priority=3)
    job = app.get_job(first)
    assert again == first
    assert (job.data, job.priority) == ({"v": 2}, 3)


def test_unique_key_is_free_again_once_the_job_finished(app: Conveyor) -> None:
    first = app.send("u", {}, unique_key="k")
    app.cancel(first)
    second = app.send("u", {}, unique_key="k")
    assert second != first


def test_unique_keys_in_one_batch_fold_as_if_sent_one_by_one(app: Conveyor) -> None:
    ids = app.send_batch(
        [
            ("u", {"v": 1}, {"unique_key": "a"}),
            ("u", {"v": 2}, {"unique_key": "a"}),
            ("u", {"v": 3}, {"unique_key": "a", "unique_mode": "replace"}),
            ("u", {"v": 4}, {"unique_key": "b"}),
            ("u", {"v": 5}),
        ]
    )
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert (app.get_job(ids[0])).data == {"v": 3}
    assert len(app.list_jobs(queue="u")) == 3


def test_singleton_throttles_one_job_per_window(app: Conveyor) -> None:
    first = app.send("t", {"v": 1}, singleton_key="k", singleton_seconds=3600)
    second = app.send("t", {"v": 2}, singleton_key="k", singleton_seconds=3600)
    other = app.send("t", {"v": 3}, singleton_key="j", singleton_seconds=3600)
    app.cancel(first)
    after_finish = app.send("t", {"v": 4}, singleton_key="k", singleton_seconds=3600)
    assert first == second == after_finish  # the window outlives the job
    assert other != first
    assert len(app.list_jobs(queue="t")) == 2


def test_singleton_window_follows_the_clock(conveyor_dsn: str, conveyor_schema: str) -> None:
    from conveyor import FrozenClock

    clock = FrozenClock(datetime(2031, 5, 1, 12, 0, 10, tzinfo=UTC))
    with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        a = app.send("t", 1, singleton_key="k", singleton_seconds=60)
        clock.advance(40)  # 12:00:50, same minute
        b = app.send("t", 2, singleton_key="k", singleton_seconds=60)
        clock.advance(20)  # 12:01:10, next window
        c = app.send("t", 3, singleton_key="k", singleton_seconds=60)
    assert a == b != c


def test_cancel_a_queued_job(app: Conveyor) -> None:
    job_id = app.send("q", {})
    cancelled = app.cancel(job_id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.finished_at is not None
    assert (app.get_job(job_id)).state is JobState.CANCELLED
    assert (app.cancel(job_id)).state is JobState.CANCELLED  # idempotent


def test_cancel_and_retry_unknown_ids(app: Conveyor) -> None:
    with pytest.raises(JobNotFound):
        app.cancel(uuid.uuid4())
    with pytest.raises(JobNotFound):
        app.retry(uuid.uuid4())
    with pytest.raises(JobNotFound):
        app.get_job(uuid.uuid4())
    with pytest.raises(InvalidOption):
        app.get_job("not-a-uuid")


def test_retry_brings_a_delayed_job_forward(app: Conveyor) -> None:
    job_id = app.send("q", {}, start_after=3600)
    job = app.retry(job_id)
    assert job.state is JobState.CREATED
    assert job.run_at < job.created_at + timedelta(seconds=5)


def test_retry_revives_a_cancelled_job(app: Conveyor) -> None:
    job_id = app.send("q", {"x": 1})
    app.cancel(job_id)
    job = app.retry(job_id)
    assert (job.state, job.attempt, job.finished_at) == (JobState.CREATED, 0, None)
    assert (app.get_job(job_id)).state is JobState.CREATED


def test_retry_refuses_a_running_job(app: Conveyor, conveyor_dsn: str) -> None:
    job_id = app.send("q", {})
    with psycopg.Connection.connect(conveyor_dsn, autocommit=True) as conn:
        # What a worker's fetch does to a job it claims.
        conn.execute(
            f"UPDATE {app.schema}.job SET state = 'active', attempt = 1,"
            " worker_id = gen_random_uuid(), started_at = now() WHERE id = %s",
            [job_id],
        )
    with pytest.raises(JobStateError):
        app.retry(job_id)
    assert (app.cancel(job_id)).state is JobState.CANCELLED


def test_list_jobs_filters_and_orders(app: Conveyor) -> None:
    a = app.send("a", 1)
    b = app.send("b", 2)
    c = app.send("a", 3)
    app.cancel(c)
    assert [j.id for j in app.list_jobs()] == [c, b, a]
    assert [j.id for j in app.list_jobs(order="asc")] == [a, b, c]
    assert [j.id for j in app.list_jobs(queue="a")] == [c, a]
    assert [j.id for j in app.list_jobs(state="cancelled")] == [c]
    assert [j.id for j in app.list_jobs(state=["created"], limit=1)] == [b]
    assert [j.id for j in app.list_jobs(limit=1, offset=2)] == [a]
    with pytest.raises(InvalidOption):
        app.list_jobs(state="bogus")
    with pytest.raises(InvalidOption):
        app.list_jobs(limit=0)


@pytest.mark.parametrize(
    ("queue", "data", "options", "error"),
    [
        ("", {}, {}, InvalidQueueName),
        ("bad name", {}, {}, InvalidQueueName),
        ("x" * 129, {}, {}, InvalidQueueName),
        ("q;drop", {}, {}, InvalidQueueName),
        ("q", {"when": datetime.now(UTC)}, {}, PayloadError),
        ("q", {1, 2}, {}, PayloadError),
        ("q", float("nan"), {}, PayloadError),
        ("q", {"s": "a\x00b"}, {}, PayloadError),
        ("q", {"s\x00": 1}, {}, PayloadError),
        ("q", "\ud800", {}, PayloadError),
        ("q", "x" * (1024 * 1024 + 1), {}, PayloadTooLarge),
        ("q", "é" * 600_000, {}, PayloadTooLarge),  # 1.2 MB of UTF-8 in 600,002 characters
        ("q", {}, {"priorty": 1}, UnknownOption),
        ("q", {}, {"priority": "high"}, InvalidOption),
        ("q", {}, {"priority": 2**40}, InvalidOption),
        ("q", {}, {"retry_limit": -1}, InvalidOption),
        ("q", {}, {"retry_limit": True}, InvalidOption),
        ("q", {}, {"retry_delay": -5}, InvalidOption),
        ("q", {}, {"retry_backoff": "sometimes"}, InvalidOption),
        ("q", {}, {"expire_in": 0}, InvalidOption),
        ("q", {}, {"expire_in": float("nan")}, InvalidOption),
        ("q", {}, {"retention": "1 day"}, InvalidOption),
        ("q", {}, {"start_after": -1}, InvalidOption),
        ("q", {}, {"start_after": datetime(2030, 1, 1)}, InvalidOption),
        ("q", {}, {"singleton_key": "k"}, InvalidOption),
        ("q", {}, {"singleton_seconds": 0}, InvalidOption),
        ("q", {}, {"unique_key": ""}, InvalidOption),
        ("q", {}, {"unique_key": "k", "unique_mode": "merge"}, InvalidOption),
        ("q", {}, {"unique_key": "k", "singleton_key": "k", "singleton_seconds": 5}, InvalidOption),
        ("q", {}, {"dead_letter": "no good"}, InvalidQueueName),
        ("q", {}, {"depends_on": ["nope"]}, InvalidOption),
    ],
)
def test_bad_input_raises_and_writes_nothing(
    app: Conveyor, queue: str, data: object, options: dict[str, object], error: type
) -> None:
    with pytest.raises(error):
        app.send(queue, data, **options)
    with pytest.raises(error):
        app.send_batch([("fine", {}), (queue, data, options)])
    assert app.list_jobs() == []
    assert app.list_queues() == []


def test_payload_limit_is_configurable(conveyor_dsn: str, conveyor_schema: str) -> None:
    with Conveyor(conveyor_dsn, schema=conveyor_schema, max_payload_bytes=100) as app:
        app.send("q", "x" * 90)
        with pytest.raises(PayloadTooLarge):
            app.send("q", "x" * 100)


def test_connection_of_the_wrong_kind_is_refused(app: Conveyor, conveyor_dsn: str) -> None:
    with pytest.raises(InvalidOption):
        app.send("q", {}, connection=object())  # type: ignore[arg-type]


def test_debounce_runs_the_last_send_after_the_quiet_period(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    from conveyor import FrozenClock

    clock = FrozenClock(datetime(2031, 5, 1, 12, 0, 0, tzinfo=UTC))
    with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        first = app.send("d", {"v": 1}, unique_key="doc-7", debounce_seconds=30)
        clock.advance(20)
        second = app.send("d", {"v": 2}, unique_key="doc-7", debounce_seconds=30)
        job = app.get_job(first)
        assert second == first
        assert job.data == {"v": 2}
        assert job.run_at == clock() + timedelta(seconds=30)  # pushed back by the later send
        with pytest.raises(InvalidOption):
            app.send("d", {}, debounce_seconds=30)
