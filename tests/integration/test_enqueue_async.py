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


async def test_send_stores_the_job_with_its_options(app_async: Conveyor) -> None:
    job_id = await app_async.send_async(
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
    job = await app_async.get_job_async(job_id)
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


async def test_get_job_accepts_a_string_id(app_async: Conveyor) -> None:
    job_id = await app_async.send_async("q", [1, 2, 3])
    assert (await app_async.get_job_async(str(job_id))).data == [1, 2, 3]


async def test_start_after_takes_seconds_timedelta_or_datetime(app_async: Conveyor) -> None:
    now_id = await app_async.send_async("q", None)
    base = (await app_async.get_job_async(now_id)).created_at
    by_seconds = await app_async.get_job_async(await app_async.send_async("q", 1, start_after=60))
    by_delta = await app_async.get_job_async(
        await app_async.send_async("q", 2, start_after=timedelta(hours=1))
    )
    when = datetime(2030, 1, 1, tzinfo=UTC)
    by_date = await app_async.get_job_async(await app_async.send_async("q", 3, start_after=when))
    assert abs((by_seconds.run_at - by_seconds.created_at).total_seconds() - 60) < 0.01
    assert abs((by_delta.run_at - by_delta.created_at).total_seconds() - 3600) < 0.01
    assert by_date.run_at == when
    assert by_seconds.created_at >= base


async def test_defaults_job_beats_queue_beats_app(conveyor_dsn: str, conveyor_schema: str) -> None:
    async with Conveyor(
        conveyor_dsn, schema=conveyor_schema, retry_limit=7, expire_in=60, priority=1
    ) as app:
        await app.create_queue_async("reports", retry_limit=3, priority=2)
        from_queue = await app.get_job_async(await app.send_async("reports", {}))
        from_job = await app.get_job_async(await app.send_async("reports", {}, retry_limit=0))
        from_app = await app.get_job_async(await app.send_async("other", {}))
    assert (from_queue.retry_limit, from_queue.priority, from_queue.expire_in) == (3, 2, 60)
    assert from_job.retry_limit == 0
    assert (from_app.retry_limit, from_app.priority, from_app.expire_in) == (7, 1, 60)


async def test_builtin_defaults(app_async: Conveyor) -> None:
    job = await app_async.get_job_async(await app_async.send_async("q", {}))
    assert (job.priority, job.retry_limit, job.retry_delay, job.retry_backoff) == (
        0, 2, 5, "exponential"
    )  # fmt: skip
    assert (job.retry_delay_max, job.expire_in, job.retention) == (3600, 900, 7 * 86400)


async def test_send_batch_returns_ids_in_order(app_async: Conveyor) -> None:
    ids = await app_async.send_batch_async(
        [("a", {"n": 1}), ("b", {"n": 2}, {"priority": 9}), ("a", {"n": 3}, {"start_after": 5})]
    )
    jobs = [await app_async.get_job_async(i) for i in ids]
    assert [(j.queue, j.data["n"]) for j in jobs] == [("a", 1), ("b", 2), ("a", 3)]
    assert jobs[1].priority == 9
    assert jobs[2].run_at > jobs[2].created_at
    assert await app_async.send_batch_async([]) == []


async def test_send_batch_of_ten_thousand(app_async: Conveyor) -> None:
    ids = await app_async.send_batch_async([("bulk", {"i": i}) for i in range(10_000)])
    assert len(set(ids)) == 10_000
    stats = await app_async.queue_stats_async("bulk")
    assert stats.counts[JobState.CREATED] == 10_000
    assert (await app_async.get_job_async(ids[-1])).data == {"i": 9_999}


class CountingCursor(psycopg.AsyncCursor[Any]):
    executed = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Self:
        CountingCursor.executed += 1
        return await super().execute(*args, **kwargs)


async def test_send_batch_is_one_statement(app_async: Conveyor, conveyor_dsn: str) -> None:
    CountingCursor.executed = 0
    async with await psycopg.AsyncConnection.connect(
        conveyor_dsn, cursor_factory=CountingCursor
    ) as conn:
        ids = await app_async.send_batch_async(
            [("bulk", {"i": i}, {"priority": i % 3}) for i in range(10_000)], connection=conn
        )
        assert CountingCursor.executed == 1
        await conn.commit()
    assert len(ids) == 10_000


async def test_transactional_send_exists_only_if_committed(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    async with await psycopg.AsyncConnection.connect(conveyor_dsn) as conn:
        rolled_back = await app_async.send_async("tx", {"n": 1}, connection=conn)
        batch_rolled_back = await app_async.send_batch_async([("tx", {"n": 2})], connection=conn)
        await conn.rollback()
        committed = await app_async.send_async("tx", {"n": 3}, connection=conn)
        seen_inside = await app_async.get_job_async(committed, connection=conn)
        with pytest.raises(JobNotFound):
            await app_async.get_job_async(committed)  # not visible outside before commit
        await conn.commit()
    assert seen_inside.data == {"n": 3}
    assert (await app_async.get_job_async(committed)).data == {"n": 3}
    for job_id in [rolled_back, *batch_rolled_back]:
        with pytest.raises(JobNotFound):
            await app_async.get_job_async(job_id)


async def test_a_callers_connection_that_loads_json_as_text_still_reads_json_values(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    """Django's connections load jsonb as text (its JSONField decodes it); what Conveyor reads
    on such a connection comes back as JSON values all the same, and the connection keeps its
    own loaders."""
    job_id = await app_async.send_async("tx", {"n": 1})
    async with await psycopg.AsyncConnection.connect(conveyor_dsn) as conn:
        conn.adapters.register_loader("jsonb", TextLoader)
        job = await app_async.get_job_async(job_id, connection=conn)
        cur = await conn.execute("SELECT '{\"a\": 1}'::jsonb")
        assert await cur.fetchone() == ('{"a": 1}',)
    assert job.data == {"n": 1}
    assert job.errors == []


async def test_unique_key_keep_returns_the_holder(app_async: Conveyor) -> None:
    first = await app_async.send_async("u", {"v": 1}, unique_key="k")
    second = await app_async.send_async("u", {"v": 2}, unique_key="k")
    other_queue = await app_async.send_async("u2", {"v": 3}, unique_key="k")
    assert first == second != other_queue
    assert (await app_async.get_job_async(first)).data == {"v": 1}


async def test_unique_key_replace_updates_the_queued_job(app_async: Conveyor) -> None:
    first = await app_async.send_async("u", {"v": 1}, unique_key="k")
    again = await app_async.send_async(
        "u", {"v": 2}, unique_key="k", unique_mode="replace", priority=3
    )
    job = await app_async.get_job_async(first)
    assert again == first
    assert (job.data, job.priority) == ({"v": 2}, 3)


async def test_unique_key_is_free_again_once_the_job_finished(app_async: Conveyor) -> None:
    first = await app_async.send_async("u", {}, unique_key="k")
    await app_async.cancel_async(first)
    second = await app_async.send_async("u", {}, unique_key="k")
    assert second != first


async def test_unique_keys_in_one_batch_fold_as_if_sent_one_by_one(app_async: Conveyor) -> None:
    ids = await app_async.send_batch_async(
        [
            ("u", {"v": 1}, {"unique_key": "a"}),
            ("u", {"v": 2}, {"unique_key": "a"}),
            ("u", {"v": 3}, {"unique_key": "a", "unique_mode": "replace"}),
            ("u", {"v": 4}, {"unique_key": "b"}),
            ("u", {"v": 5}),
        ]
    )
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert (await app_async.get_job_async(ids[0])).data == {"v": 3}
    assert len(await app_async.list_jobs_async(queue="u")) == 3


async def test_singleton_throttles_one_job_per_window(app_async: Conveyor) -> None:
    first = await app_async.send_async("t", {"v": 1}, singleton_key="k", singleton_seconds=3600)
    second = await app_async.send_async("t", {"v": 2}, singleton_key="k", singleton_seconds=3600)
    other = await app_async.send_async("t", {"v": 3}, singleton_key="j", singleton_seconds=3600)
    await app_async.cancel_async(first)
    after_finish = await app_async.send_async(
        "t", {"v": 4}, singleton_key="k", singleton_seconds=3600
    )
    assert first == second == after_finish  # the window outlives the job
    assert other != first
    assert len(await app_async.list_jobs_async(queue="t")) == 2


async def test_singleton_window_follows_the_clock(conveyor_dsn: str, conveyor_schema: str) -> None:
    from conveyor import FrozenClock

    clock = FrozenClock(datetime(2031, 5, 1, 12, 0, 10, tzinfo=UTC))
    async with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        a = await app.send_async("t", 1, singleton_key="k", singleton_seconds=60)
        clock.advance(40)  # 12:00:50, same minute
        b = await app.send_async("t", 2, singleton_key="k", singleton_seconds=60)
        clock.advance(20)  # 12:01:10, next window
        c = await app.send_async("t", 3, singleton_key="k", singleton_seconds=60)
    assert a == b != c


async def test_cancel_a_queued_job(app_async: Conveyor) -> None:
    job_id = await app_async.send_async("q", {})
    cancelled = await app_async.cancel_async(job_id)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.finished_at is not None
    assert (await app_async.get_job_async(job_id)).state is JobState.CANCELLED
    assert (await app_async.cancel_async(job_id)).state is JobState.CANCELLED  # idempotent


async def test_cancel_and_retry_unknown_ids(app_async: Conveyor) -> None:
    with pytest.raises(JobNotFound):
        await app_async.cancel_async(uuid.uuid4())
    with pytest.raises(JobNotFound):
        await app_async.retry_async(uuid.uuid4())
    with pytest.raises(JobNotFound):
        await app_async.get_job_async(uuid.uuid4())
    with pytest.raises(InvalidOption):
        await app_async.get_job_async("not-a-uuid")


async def test_retry_brings_a_delayed_job_forward(app_async: Conveyor) -> None:
    job_id = await app_async.send_async("q", {}, start_after=3600)
    job = await app_async.retry_async(job_id)
    assert job.state is JobState.CREATED
    assert job.run_at < job.created_at + timedelta(seconds=5)


async def test_retry_revives_a_cancelled_job(app_async: Conveyor) -> None:
    job_id = await app_async.send_async("q", {"x": 1})
    await app_async.cancel_async(job_id)
    job = await app_async.retry_async(job_id)
    assert (job.state, job.attempt, job.finished_at) == (JobState.CREATED, 0, None)
    assert (await app_async.get_job_async(job_id)).state is JobState.CREATED


async def test_retry_refuses_a_running_job(app_async: Conveyor, conveyor_dsn: str) -> None:
    job_id = await app_async.send_async("q", {})
    async with await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as conn:
        # What a worker's fetch does to a job it claims.
        await conn.execute(
            f"UPDATE {app_async.schema}.job SET state = 'active', attempt = 1,"
            " worker_id = gen_random_uuid(), started_at = now() WHERE id = %s",
            [job_id],
        )
    with pytest.raises(JobStateError):
        await app_async.retry_async(job_id)
    assert (await app_async.cancel_async(job_id)).state is JobState.CANCELLED


async def test_list_jobs_filters_and_orders(app_async: Conveyor) -> None:
    a = await app_async.send_async("a", 1)
    b = await app_async.send_async("b", 2)
    c = await app_async.send_async("a", 3)
    await app_async.cancel_async(c)
    assert [j.id for j in await app_async.list_jobs_async()] == [c, b, a]
    assert [j.id for j in await app_async.list_jobs_async(order="asc")] == [a, b, c]
    assert [j.id for j in await app_async.list_jobs_async(queue="a")] == [c, a]
    assert [j.id for j in await app_async.list_jobs_async(state="cancelled")] == [c]
    assert [j.id for j in await app_async.list_jobs_async(state=["created"], limit=1)] == [b]
    assert [j.id for j in await app_async.list_jobs_async(limit=1, offset=2)] == [a]
    with pytest.raises(InvalidOption):
        await app_async.list_jobs_async(state="bogus")
    with pytest.raises(InvalidOption):
        await app_async.list_jobs_async(limit=0)


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
async def test_bad_input_raises_and_writes_nothing(
    app_async: Conveyor, queue: str, data: object, options: dict[str, object], error: type
) -> None:
    with pytest.raises(error):
        await app_async.send_async(queue, data, **options)
    with pytest.raises(error):
        await app_async.send_batch_async([("fine", {}), (queue, data, options)])
    assert await app_async.list_jobs_async() == []
    assert await app_async.list_queues_async() == []


async def test_payload_limit_is_configurable(conveyor_dsn: str, conveyor_schema: str) -> None:
    async with Conveyor(conveyor_dsn, schema=conveyor_schema, max_payload_bytes=100) as app:
        await app.send_async("q", "x" * 90)
        with pytest.raises(PayloadTooLarge):
            await app.send_async("q", "x" * 100)


async def test_connection_of_the_wrong_kind_is_refused(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    with pytest.raises(InvalidOption):
        await app_async.send_async("q", {}, connection=object())  # type: ignore[arg-type]


async def test_debounce_runs_the_last_send_after_the_quiet_period(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    from conveyor import FrozenClock

    clock = FrozenClock(datetime(2031, 5, 1, 12, 0, 0, tzinfo=UTC))
    async with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        first = await app.send_async("d", {"v": 1}, unique_key="doc-7", debounce_seconds=30)
        clock.advance(20)
        second = await app.send_async("d", {"v": 2}, unique_key="doc-7", debounce_seconds=30)
        job = await app.get_job_async(first)
        assert second == first
        assert job.data == {"v": 2}
        assert job.run_at == clock() + timedelta(seconds=30)  # pushed back by the later send
        with pytest.raises(InvalidOption):
            await app.send_async("d", {}, debounce_seconds=30)
