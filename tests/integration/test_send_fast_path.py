"""The send's fast path (``job_insert_plain``): a job with no unique or throttle key, no
dependencies and no completion hook is stored by one plain statement instead of insert_jobs; a
large batch of jobs that set no option, by a binary COPY (``job_copy_in``).

It must store exactly the row the general path stores for the same input, whatever the queue's
options say at that moment, and wake workers the same way (a NOTIFY per queue, at commit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from conveyor import Conveyor, FrozenClock
from conveyor._store import store_async
from conveyor._store.connections import COPY_MIN
from conveyor._store.store import Store
from conveyor._store.store_async import AsyncStore
from conveyor.errors import DuplicateJob
from conveyor.options import JobSpec, job_spec

NOW = datetime(2031, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)

# Queue options the general path reads from the queue row (policy short and stately excepted:
# they keep a queued key, which sends the job to insert_jobs).
QUEUES: dict[str, dict[str, Any]] = {
    "new": {},
    "bare": {"policy": "standard"},
    "defaults": {
        "priority": 3,
        "retry_limit": 9,
        "retry_delay": 1.5,
        "retry_backoff": "linear",
        "retry_delay_max": 77.25,
        "expire_in": 33,
        "retention": 123.5,
        "dead_letter": "q.dead",
    },
    "keep-none": {"retention": 0},
    "fair": {"fair": True, "priority": -2},
    "limited": {"policy": "singleton", "concurrency": 2, "rate_limit": (5, 2.0)},
}
# Job options of the fast path.
OPTIONS: list[dict[str, Any]] = [
    {},
    {"priority": 8, "retry_limit": 0, "retry_delay": 0, "retry_backoff": False},
    {"retry_delay_max": 0.5, "expire_in": timedelta(minutes=3), "retention": 0},
    {"start_after": 90.5, "group_key": "g-1", "dead_letter": "other.dead"},
    {"start_after": datetime(2032, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=-5)))},
    {"start_after": timedelta(0), "fair_key": "tenant-a", "priority": -(2**31)},
    {"retry_backoff": True, "retention": 10 * 366 * 86_400.0, "expire_in": 1e-6},
]
# The app's defaults, below the queue's.
APP_DEFAULTS = {"priority": 1, "retry_limit": 4, "expire_in": 60, "retention": 3600}


async def rows_of(
    conn: psycopg.AsyncConnection[Any], schema: str, ids: list[uuid.UUID]
) -> list[Any]:
    """Every column of these jobs but the id, in the order given."""
    found = {}
    for job_id in ids:
        cur = await conn.execute(
            f"SELECT to_jsonb(j) - 'id' FROM \"{schema}\".job j WHERE j.id = %s", (job_id,)
        )
        row = await cur.fetchone()
        assert row is not None, f"job {job_id} not stored"
        found[job_id] = row[0]
    return [found[i] for i in ids]


def spy(store: AsyncStore) -> list[bool]:
    """What each fast-path call of ``store`` answered (True: it stored the jobs)."""
    answers: list[bool] = []

    def recording(method: Any) -> Any:
        async def recorded(*args: Any, **kwargs: Any) -> bool:
            answer: bool = await method(*args, **kwargs)
            answers.append(answer)
            return answer

        return recorded

    store.job_insert_plain = recording(store.job_insert_plain)  # type: ignore[method-assign]
    store.job_insert_bare = recording(store.job_insert_bare)  # type: ignore[method-assign]
    return answers


async def general(app: Conveyor, specs: list[JobSpec], meta: str | None = None) -> list[uuid.UUID]:
    """The same jobs through the general path (insert_jobs), as the client calls it."""
    store = app._stores.store_async()
    settings = app._settings
    found = await store.job_insert_many(specs, settings.defaults, settings.clock(), None, meta)
    return [job_id for job_id, _ in found]  # type: ignore[misc]


def again(spec: JobSpec) -> JobSpec:
    """The same job under a new id."""
    return dataclasses.replace(spec, id=uuid.uuid4())


async def make_queues(app: Conveyor) -> None:
    for name, options in QUEUES.items():
        if name != "new":
            await app.create_queue_async(name, **options)


async def test_a_send_on_the_fast_path_stores_what_the_general_path_stores(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    clock = FrozenClock(NOW)
    async with (
        Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock, **APP_DEFAULTS) as app,
        await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as conn,
    ):
        await make_queues(app)
        answers = spy(app._stores.store_async())
        for queue in QUEUES:
            for options in OPTIONS:
                fast = await app.send_async(queue, {"q": queue, "é": [1.5, None]}, **options)
                spec = job_spec(queue, {"q": queue, "é": [1.5, None]}, options, 1 << 20)
                (slow,) = await general(app, [spec])
                a, b = await rows_of(conn, conveyor_schema, [fast, slow])
                assert a == b, (queue, options)
            clock.advance(1)
        assert answers == [True] * len(QUEUES) * len(OPTIONS)
        # From each queue's second send on (its first read of the queue), from its copy
        # (job_insert_resolved, test_queue_copies.py).
        assert set(app._stores.store_async()._copies) == set(QUEUES)
        # The queue first named by a send exists, with no defaults of its own.
        assert (await app.get_queue_async("new")).retry_limit is None


async def test_a_handler_s_defaults_and_meta_on_the_fast_path(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    clock = FrozenClock(NOW)
    async with (
        Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app,
        await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as conn,
    ):

        @app.job("handled", retry_limit=6, priority=2)
        async def handled(job: Any) -> None: ...

        await app.create_queue_async("handled", retry_limit=1, expire_in=5)
        fast = await app.send_async("handled", [1])
        defaults = {"retry_limit": 6, "priority": 2}
        (slow,) = await general(app, [job_spec("handled", [1], defaults, 1 << 20)])
        a, b = await rows_of(conn, conveyor_schema, [fast, slow])
        assert a == b and a["retry_limit"] == 6 and a["expire_in"] == 5

        # The trace context a send stores with its jobs (job.meta).
        store = app._stores.store_async()
        meta = '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'
        one = job_spec("handled", 1, {}, 1 << 20)
        assert await store.job_insert_plain([one], {}, clock(), None, meta)
        many = [job_spec("handled", i, {"group_key": "g"}, 1 << 20) for i in range(2)]
        assert await store.job_insert_plain(many, {}, clock(), None, meta)
        slow_ids = await general(app, [again(one), *map(again, many)], meta)
        fast_rows = await rows_of(conn, conveyor_schema, [one.id, *(s.id for s in many)])
        assert fast_rows == await rows_of(conn, conveyor_schema, slow_ids)
        assert fast_rows[0]["meta"] == {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        }


async def test_a_batch_on_the_fast_path_stores_what_the_general_path_stores(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    clock = FrozenClock(NOW)
    async with (
        Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock, **APP_DEFAULTS) as app,
        await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as conn,
    ):
        await make_queues(app)
        answers = spy(app._stores.store_async())
        items = [
            (queue, {"n": n}, options)
            for n, (queue, options) in enumerate(
                (q, o) for q in [*QUEUES, "another-new"] for o in OPTIONS
            )
        ]
        fast = await app.send_batch_async(items)
        slow = await general(app, [job_spec(q, d, o, 1 << 20) for q, d, o in items])
        assert answers == [True]
        assert await rows_of(conn, conveyor_schema, fast) == await rows_of(
            conn, conveyor_schema, slow
        )
        # Uniform batches too: every array but the id's, queue's and data's sent as NULL.
        plain = await app.send_batch_async([("defaults", i) for i in range(3)])
        slow = await general(app, [job_spec("defaults", i, {}, 1 << 20) for i in range(3)])
        assert await rows_of(conn, conveyor_schema, plain) == await rows_of(
            conn, conveyor_schema, slow
        )
        assert answers == [True, True]


async def test_queue_options_changed_between_sends_are_read_at_once(app_async: Conveyor) -> None:
    await app_async.create_queue_async("q", retry_limit=3, retention=60)
    first = await app_async.get_job_async(await app_async.send_async("q", 1))
    await app_async.update_queue_async("q", retry_limit=8, retention=None, fair=True)
    second = await app_async.get_job_async(await app_async.send_async("q", 2))
    third, _ = await app_async.get_jobs_async(await app_async.send_batch_async([("q", 3)] * 2))
    assert (first.retry_limit, first.retention, first.fair_key) == (3, 60, None)
    assert (second.retry_limit, second.retention, second.fair_key) == (8, 604800, "")
    assert (third.retry_limit, third.retention, third.fair_key) == (8, 604800, "")


@pytest.mark.parametrize("policy", ["short", "stately"])
async def test_a_queue_that_keeps_a_queued_key_takes_the_general_path(
    app_async: Conveyor, policy: str
) -> None:
    await app_async.create_queue_async("one-waiting", policy=policy)
    answers = spy(app_async._stores.store_async())
    first = await app_async.send_async("one-waiting", 1)
    second = await app_async.send_async("one-waiting", 2)
    both = await app_async.send_batch_async([("elsewhere", 3), ("one-waiting", 4)])
    assert answers == [False, False, False]
    assert first == second == both[1]
    assert [j.data for j in await app_async.list_jobs_async("one-waiting")] == [1]
    assert [j.data for j in await app_async.list_jobs_async("elsewhere")] == [3]


async def test_keys_dependencies_and_hooks_keep_the_general_path(app_async: Conveyor) -> None:
    answers = spy(app_async._stores.store_async())
    a = await app_async.send_async("q", 1, unique_key="k")
    assert await app_async.send_async("q", 2, unique_key="k") == a
    await app_async.send_async("q", 3, singleton_key="s", singleton_seconds=60)
    await app_async.send_async("q", 4, depends_on=[a])
    await app_async.send_async("q", 5, on_complete="hooks")
    await app_async.send_batch_async([("q", 6), ("q", 7, {"unique_key": "other"})])
    assert answers == []
    assert await app_async.send_async("q", 8) and answers == [True]


async def test_a_send_in_the_caller_s_transaction_wakes_listeners_at_commit(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    channel = f"conveyor:{conveyor_schema}"
    async with (
        await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(conveyor_dsn) as caller,
    ):
        await listener.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
        answers = spy(app_async._stores.store_async())
        one = await app_async.send_async("woken", 1, connection=caller)
        many = await app_async.send_batch_async(
            [("woken", 2), ("woken", 3), ("also", 4)], connection=caller
        )
        assert answers == [True, True]
        # A round trip on the listener delivers whatever was notified so far: nothing yet.
        await listener.execute("SELECT 1")
        heard = [n.payload async for n in listener.notifies(timeout=0, stop_after=1)]
        assert heard == []
        await caller.commit()
        heard = [
            n.payload
            async for n in listener.notifies(timeout=5, stop_after=2)
            if n.channel == channel
        ]
        assert sorted(heard) == ["also", "woken"]  # once per queue: folded at commit
        assert len(await app_async.get_jobs_async([one, *many])) == 4


async def test_a_rolled_back_send_stores_and_wakes_nothing(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    channel = f"conveyor:{conveyor_schema}"
    async with (
        await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(conveyor_dsn) as caller,
    ):
        await listener.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
        one = await app_async.send_async("gone", 1, connection=caller)
        await caller.rollback()
        # On a connection of its own: a send on a pooled one notifies only an idle worker.
        await app_async.send_async("marker", 2, connection=listener)
        heard = [n.payload async for n in listener.notifies(timeout=5, stop_after=1)]
        assert heard == ["marker"]
        assert await app_async.get_jobs_async([one]) == []
        assert [q.name for q in await app_async.list_queues_async()] == ["marker"]


async def test_concurrent_first_sends_to_a_new_queue(app_async: Conveyor) -> None:
    ids = await asyncio.gather(*(app_async.send_async("fresh", i) for i in range(8)))
    assert len(set(ids)) == 8
    assert [q.name for q in await app_async.list_queues_async()] == ["fresh"]


# -- the COPY of a large batch of jobs that set no option ------------------------------------


async def test_a_copied_batch_stores_what_the_general_path_stores(
    conveyor_dsn: str, conveyor_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every queue's options resolved as insert_jobs resolves them (the queue's, the app's, the
    built-in ones; a fair queue's key), the data stored as JSON values, and a queue first
    named by the batch created."""
    monkeypatch.setattr(store_async, "COPY_MIN", 2)  # a small batch shows every queue's case
    copied: list[int] = []
    real = AsyncStore._copy_bare

    async def counted(self: AsyncStore, ids: list[uuid.UUID], *args: Any) -> bool:
        answer: bool = await real(self, ids, *args)
        copied.append(len(ids) if answer else 0)
        return answer

    monkeypatch.setattr(AsyncStore, "_copy_bare", counted)
    clock = FrozenClock(NOW)
    async with (
        Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock, **APP_DEFAULTS) as app,
        await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as conn,
    ):
        await make_queues(app)
        data: list[Any] = [{"q": "x", "é": [1.5, None]}, "text", 7, None, [{"deep": {}}]]
        items = [(q, d) for q in [*QUEUES, "another-new"] for d in data]
        fast = await app.send_batch_async(items)
        slow = await general(app, [job_spec(q, d, {}, 1 << 20) for q, d in items])
        assert copied == [len(items)]
        assert await rows_of(conn, conveyor_schema, fast) == await rows_of(
            conn, conveyor_schema, slow
        )
        assert [j.data for j in await app.get_jobs_async(fast[:5])] == data
        assert (await app.get_queue_async("another-new")).retry_limit is None


@pytest.mark.parametrize("policy", ["short", "stately"])
async def test_a_large_batch_for_a_queue_that_keeps_a_queued_key_is_not_copied(
    app_async: Conveyor, policy: str
) -> None:
    await app_async.create_queue_async("one-waiting", policy=policy)
    batch = [("elsewhere", n) for n in range(COPY_MIN)] + [
        ("one-waiting", "a"),
        ("one-waiting", "b"),
    ]
    ids = await app_async.send_batch_async(batch)
    # insert_jobs settled the key: the second job of the queue is the first one.
    assert ids[-1] == ids[-2]
    assert len(await app_async.list_jobs_async("one-waiting")) == 1
    assert len(set(ids[:COPY_MIN])) == COPY_MIN
    assert (await app_async.queue_stats_async("elsewhere")).queued == COPY_MIN


@pytest.mark.parametrize("autocommit", [True, False])
async def test_a_copied_batch_in_the_caller_s_transaction_wakes_listeners_with_its_rows(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str, autocommit: bool
) -> None:
    """On a caller's connection, each queue is notified once, at commit (nothing is heard
    before the caller commits), and the rows are there once it is heard. That the rows and the
    NOTIFY commit together on an autocommit connection is shown by the failing COPY below: here
    the send returns before the listener looks."""
    channel = f"conveyor:{conveyor_schema}"
    async with (
        await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=autocommit) as caller,
    ):
        await listener.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
        batch = [("woken", n) for n in range(COPY_MIN)] + [("also", -1)]
        ids = await app_async.send_batch_async(batch, connection=caller)
        if not autocommit:
            await listener.execute("SELECT 1")
            assert [n.payload async for n in listener.notifies(timeout=0, stop_after=1)] == []
            await caller.commit()
        heard = [
            n.payload
            async for n in listener.notifies(timeout=5, stop_after=2)
            if n.channel == channel
        ]
        # Every row, once heard.
        count = psycopg.sql.SQL("SELECT count(*) FROM {}.job").format(
            psycopg.sql.Identifier(conveyor_schema)
        )
        found = await (await listener.execute(count)).fetchone()
        assert sorted(heard) == ["also", "woken"]
        assert found == (COPY_MIN + 1,)
        assert len(await app_async.get_jobs_async(ids)) == COPY_MIN + 1


async def test_a_rolled_back_copied_batch_stores_nothing(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    async with await psycopg.AsyncConnection.connect(conveyor_dsn) as caller:
        ids = await app_async.send_batch_async(
            [("gone", n) for n in range(COPY_MIN)], connection=caller
        )
        await caller.rollback()
    assert await app_async.get_jobs_async(ids[:10]) == []


def test_a_sync_send_batch_copies_a_large_batch_too(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    copied: list[int] = []
    real = Store._copy_bare

    def counted(self: Store, ids: list[uuid.UUID], *args: Any) -> bool:
        answer: bool = real(self, ids, *args)
        copied.append(len(ids) if answer else 0)
        return answer

    monkeypatch.setattr(Store, "_copy_bare", counted)
    ids = app.send_batch([("q", {"n": n}) for n in range(COPY_MIN + 1)])
    assert copied == [COPY_MIN + 1]  # the sync twin takes the COPY too
    assert len(set(ids)) == COPY_MIN + 1
    assert app.queue_stats("q").queued == COPY_MIN + 1
    assert app.get_job(ids[-1]).data == {"n": COPY_MIN}  # type: ignore[union-attr]


async def test_a_copy_that_fails_leaves_no_queue_and_no_wake_up_behind(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    """The resolving statement and the COPY commit together even on a caller's connection in
    autocommit: a COPY refused (here, an id already taken) takes back the queue it created and
    the NOTIFY it sent."""
    taken = await app_async.send_async("old", 0)
    channel = f"conveyor:{conveyor_schema}"
    store = app_async._stores.store_async()
    async with (
        await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as caller,
    ):
        await listener.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
        ids = [uuid.uuid4() for _ in range(COPY_MIN)] + [taken]
        with pytest.raises(DuplicateJob):
            await store.job_insert_bare(
                ids, ["fresh"] * len(ids), ["1"] * len(ids), {}, None, caller
            )
        await listener.execute("SELECT 1")
        assert [n.payload async for n in listener.notifies(timeout=0.3, stop_after=1)] == []
    assert [q.name for q in await app_async.list_queues_async()] == ["old"]
