"""A send of one job resolves its options from the store's copy of its queue (migration 0032):
``job_insert_resolved`` stores the job only while the queue's version is the copy's, so a copy
made stale by any change (another process's, an operator's UPDATE, the caller's own
transaction) never stores a job with old options: the send falls back to ``job_insert_plain``,
which renews the copy.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest

from conveyor import Conveyor
from conveyor._store import store_async
from conveyor._store.store_async import AsyncStore
from tests.integration.previous import release_before


def statements(store: AsyncStore) -> list[str]:
    """The names of the fast-path statements ``store`` runs from now on."""
    names: list[str] = []
    run = store._row

    async def recorded(name: str, params: dict[str, Any], conn: Any) -> tuple[Any, ...]:
        names.append(name)
        return await run(name, params, conn)

    store._row = recorded  # type: ignore[method-assign]
    return names


async def copied(app: Conveyor, queue: str, **options: Any) -> None:
    """Make the queue (with ``options``) and send to it twice: the store holds its copy."""
    await app.create_queue_async(queue, **options)
    await app.send_async(queue, 1)
    await app.send_async(queue, 2)
    assert queue in app._stores.store_async()._copies


async def options_of(app: Conveyor, job_id: uuid.UUID) -> tuple[Any, ...]:
    job = await app.get_job_async(job_id)
    return (job.priority, job.retry_limit, job.retention, job.dead_letter, job.fair_key)


async def test_sends_after_the_first_read_the_queue_from_the_copy(app_async: Conveyor) -> None:
    store = app_async._stores.store_async()
    names = statements(store)
    await app_async.send_async("fresh", 1)  # creates the queue: its snapshot sees no row
    await app_async.send_async("fresh", 2)  # reads it: the copy
    await app_async.send_async("fresh", 3, priority=4)
    await app_async.send_async("fresh", 4)
    assert names == ["job_insert_plain"] * 2 + ["job_insert_resolved"] * 2
    assert [j.priority for j in await app_async.list_jobs_async("fresh")] == [
        0,
        4,
        0,
        0,
    ]  # newest first


async def test_a_change_by_another_process_is_read_at_once(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    names = statements(app_async._stores.store_async())
    await app_async.create_queue_async("q", priority=1, retry_limit=3)
    first = await app_async.send_async("q", 1)
    second = await app_async.send_async("q", 2)
    assert await options_of(app_async, second) == await options_of(app_async, first)
    async with Conveyor(conveyor_dsn, schema=conveyor_schema) as other:
        changes: list[dict[str, Any]] = [
            {"priority": 7},
            {"retry_limit": 0, "retention": 60},
            {"dead_letter": "q.dead"},
            {"fair": True},
            {"fair": False, "priority": None},
        ]
        for change in changes:
            await other.update_queue_async("q", **change)
            sent = await app_async.send_async("q", change)
            again = await app_async.send_async("q", change)
            expected = await options_of(other, await other.send_async("q", change))
            assert await options_of(app_async, sent) == expected, change
            assert await options_of(app_async, again) == expected, change
    assert names == ["job_insert_plain", "job_insert_resolved"] + [
        "job_insert_resolved",  # refused: the queue changed
        "job_insert_plain",  # stored, and the copy renewed
        "job_insert_resolved",
    ] * len(changes)


async def test_an_operator_s_update_of_the_queue_row_is_read_at_once(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    await copied(app_async, "q", retry_limit=3)
    async with await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as conn:
        await conn.execute(
            psycopg.sql.SQL("UPDATE {}.queue SET retry_limit = 9 WHERE name = 'q'").format(
                psycopg.sql.Identifier(conveyor_schema)
            )
        )
    job = await app_async.get_job_async(await app_async.send_async("q", 3))
    assert job.retry_limit == 9


@pytest.mark.parametrize("policy", ["short", "stately"])
async def test_a_queue_turned_to_a_queued_key_policy_settles_its_key_at_once(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str, policy: str
) -> None:
    await copied(app_async, "q")
    async with Conveyor(conveyor_dsn, schema=conveyor_schema) as other:
        await other.update_queue_async("q", policy=policy)
        await other.purge_queue_async("q")
    first = await app_async.send_async("q", 3)
    assert await app_async.send_async("q", 4) == first  # one queued job at most
    assert [j.data for j in await app_async.list_jobs_async("q")] == [3]


async def test_a_queue_deleted_meanwhile_is_created_again(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    await copied(app_async, "q", priority=5)
    async with Conveyor(conveyor_dsn, schema=conveyor_schema) as other:
        await other.delete_queue_async("q")
    job = await app_async.get_job_async(await app_async.send_async("q", 3))
    assert job.priority == 0
    assert (await app_async.get_queue_async("q")).priority is None


async def test_claims_of_a_rate_limited_queue_leave_the_copy_current(
    app_async: Conveyor,
) -> None:
    """The rate limiter updates the queue row at each claim; the version stays."""
    await app_async.create_queue_async("limited", rate_limit=(100, 1.0), retry_limit=1)

    @app_async.job("limited")
    async def handle(job: Any) -> None: ...

    names = statements(app_async._stores.store_async())
    await app_async.send_async("limited", 1)
    assert await app_async.drain_async(["limited"]) == 1
    await app_async.send_async("limited", 2)
    assert await app_async.drain_async(["limited"]) == 1
    await app_async.send_async("limited", 3)
    assert names == ["job_insert_plain", "job_insert_resolved", "job_insert_resolved"]


async def test_the_caller_s_transaction_sees_its_own_change_and_a_rolled_back_one_is_gone(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    await copied(app_async, "q", retry_limit=3)
    async with await psycopg.AsyncConnection.connect(conveyor_dsn) as caller:
        schema = psycopg.sql.Identifier(app_async.schema)
        await caller.execute(
            psycopg.sql.SQL("UPDATE {}.queue SET retry_limit = 8 WHERE name = 'q'").format(schema)
        )
        inside = await app_async.send_async("q", 3, connection=caller)
        again = await app_async.send_async("q", 4, connection=caller)
        await caller.rollback()
    assert await app_async.get_jobs_async([inside, again]) == []
    names = statements(app_async._stores.store_async())
    job = await app_async.get_job_async(await app_async.send_async("q", 5))
    assert job.retry_limit == 3
    # The copy was refused in the caller's transaction and dropped; read again.
    assert names == ["job_insert_plain"]

    async with await psycopg.AsyncConnection.connect(conveyor_dsn) as caller:
        await caller.execute(
            psycopg.sql.SQL("UPDATE {}.queue SET retry_limit = 8 WHERE name = 'q'").format(schema)
        )
        inside = await app_async.send_async("q", 6, connection=caller)
        await caller.commit()
    assert (await app_async.get_job_async(inside)).retry_limit == 8


async def test_sends_in_the_caller_s_transactions_copy_the_queue_too(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    await app_async.create_queue_async("q", retry_limit=3)
    names = statements(app_async._stores.store_async())
    async with await psycopg.AsyncConnection.connect(conveyor_dsn) as caller:
        for n in range(3):
            await app_async.send_async("q", n, connection=caller)
            await caller.commit()
    assert names == ["job_insert_plain", "job_insert_resolved", "job_insert_resolved"]


async def test_a_queue_changed_twice_in_one_transaction_is_read_after_each_change(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    """Both changes give the queue the same version (the transaction's id): a copy read between
    them would pass the check after the second."""
    schema = psycopg.sql.Identifier(app_async.schema)
    change = "UPDATE {}.queue SET retry_limit = %s WHERE name = 'q'"
    await app_async.create_queue_async("q", retry_limit=3)
    async with await psycopg.AsyncConnection.connect(conveyor_dsn) as caller:
        sent = []
        for limit in (5, 6):
            await caller.execute(psycopg.sql.SQL(change).format(schema), (limit,))
            sent.append(await app_async.send_async("q", limit, connection=caller))
        await caller.commit()
    sent.append(await app_async.send_async("q", 7))
    assert [j.retry_limit for j in await app_async.get_jobs_async(sent)] == [5, 6, 6]


async def test_a_store_keeps_a_bounded_number_of_copies(
    app_async: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_async, "QUEUE_COPIES_MAX", 2)
    store = app_async._stores.store_async()
    for queue in ("a", "b", "c", "d"):
        await app_async.create_queue_async(queue)
        await app_async.send_async(queue, 1)
        assert len(store._copies) <= 2
    assert len(store._copies) == 2 and "d" in store._copies


def test_queues_made_before_the_versions_get_one(
    conveyor_dsn: str, scratch_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0032 on a schema of the previous release: its queues get a version, and sends copy them."""
    with (
        release_before("queue_version", monkeypatch) as versioned,
        Conveyor(conveyor_dsn, schema=scratch_schema) as old,
    ):
        old.migrate()
        old.create_queue("kept", retry_limit=7, fair=True)
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        assert app.migrate()[0] == f"{versioned.version:04d}_queue_version"
        sent = [app.send("kept", n) for n in range(3)]
        assert len(app._stores.store()._copies) == 1
        assert {(j.retry_limit, j.fair_key) for j in app.get_jobs(sent)} == {(7, "")}
