"""Completing a job in its handler's own transaction (job.transaction(), job.complete_in()):
the handler's writes, the jobs it sends and the completion commit together or not at all, fenced
by the attempt like every acknowledgement."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conveyor import AttemptLost, Conveyor, Job, JobState
from conveyor.errors import InvalidOption, JobStateError, PayloadError
from conveyor.events import Event


@pytest.fixture
def orders(conveyor_dsn: str, conveyor_schema: str) -> Iterator[sql.Composed]:
    """A table of the application's own, written by the handlers."""
    table = sql.SQL("{}.orders").format(sql.Identifier(conveyor_schema))
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, attempt int)").format(table))
    yield table
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(table))


def count(dsn: str, query: sql.Composable, *params: Any) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchone()[0]  # type: ignore[index]


def queued(dsn: str, schema: str, queue: str) -> int:
    query = sql.SQL("SELECT count(*) FROM {}.job WHERE queue = %s")
    return int(count(dsn, query.format(sql.Identifier(schema)), queue))


async def test_writes_a_sent_job_and_the_completion_commit_together(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str, orders: sql.Composed
) -> None:
    completed: list[Event] = []
    app_async.on("job.completed")(completed.append)

    @app_async.job("shop.order")
    async def order(job: Job) -> None:
        async with job.transaction() as conn:
            await conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(orders),
                               (job.data["id"], job.attempt))  # fmt: skip
            await app_async.send_async("shop.mail", {"order": job.data["id"]}, connection=conn)
            job.set_result({"order": job.data["id"]})

    @app_async.job("shop.mail")
    async def mail(job: Job) -> None:
        raise AssertionError("not drained in this test")

    job_id = await app_async.send_async("shop.order", {"id": 7})
    assert await app_async.drain_async(["shop.order"]) == 1
    done = await app_async.get_job_async(job_id)
    assert (done.state, done.attempt, done.result) == (JobState.COMPLETED, 1, {"order": 7})
    assert count(conveyor_dsn, sql.SQL("SELECT count(*) FROM {}").format(orders)) == 1
    assert queued(conveyor_dsn, conveyor_schema, "shop.mail") == 1
    # Reported once, by the worker, with the stored result and how long the attempt took.
    assert [(e.job.id if e.job else None, e.result) for e in completed] == [(job_id, {"order": 7})]
    assert completed[0].duration is not None and completed[0].duration >= 0


def test_a_rolled_back_block_writes_nothing_and_the_attempt_fails(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str, orders: sql.Composed
) -> None:
    @app.job("shop.order", retry_limit=1, retry_delay=0)
    def order(job: Job) -> str:
        with job.transaction() as conn:
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(orders),
                         (job.attempt, job.attempt))  # fmt: skip
            app.send("shop.mail", {}, connection=conn)
            if job.attempt == 1:
                raise RuntimeError("payment declined")
        return "ignored"

    @app.job("shop.mail")
    def mail(job: Job) -> None:
        raise AssertionError("not drained in this test")

    job_id = app.send("shop.order", {})
    assert app.drain(["shop.order"]) == 2
    done = app.get_job(job_id)
    assert (done.state, done.attempt) == (JobState.COMPLETED, 2)
    assert [e["type"] for e in done.errors] == ["RuntimeError"]
    # Only the second attempt's writes exist.
    ids = sql.SQL("SELECT array_agg(id) FROM {}").format(orders)
    assert count(conveyor_dsn, ids) == [2]
    assert queued(conveyor_dsn, conveyor_schema, "shop.mail") == 1


def test_a_block_swallowed_by_the_handler_still_fails_the_attempt(
    app: Conveyor, conveyor_dsn: str, orders: sql.Composed
) -> None:
    @app.job("shop.order", retry_limit=0)
    def order(job: Job) -> str:
        try:
            with job.transaction() as conn:
                conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 1)").format(orders))
                raise RuntimeError("changed my mind")
        except RuntimeError:
            pass
        return "done?"

    job_id = app.send("shop.order", {})
    app.drain(["shop.order"])
    done = app.get_job(job_id)
    assert done.state is JobState.FAILED
    assert done.error is not None and done.error["type"] == "TransactionRolledBack"
    assert count(conveyor_dsn, sql.SQL("SELECT count(*) FROM {}").format(orders)) == 0


def test_a_stale_attempt_cannot_complete_and_its_writes_roll_back(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str, orders: sql.Composed
) -> None:
    seen: list[BaseException] = []

    @app.job("shop.order")
    def order(job: Job) -> None:
        try:
            with job.transaction() as conn:
                conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 1)").format(orders))
                app.send("shop.mail", {}, connection=conn)
                app.cancel(job.id)  # the attempt loses its job before its block ends
        except AttemptLost as exc:
            seen.append(exc)
            raise

    job_id = app.send("shop.order", {})
    app.drain(["shop.order"])
    assert len(seen) == 1 and str(job_id) in str(seen[0])
    assert app.get_job(job_id).state is JobState.CANCELLED
    assert count(conveyor_dsn, sql.SQL("SELECT count(*) FROM {}").format(orders)) == 0
    assert queued(conveyor_dsn, conveyor_schema, "shop.mail") == 0


async def test_an_async_attempt_recovered_meanwhile_cannot_complete(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str, orders: sql.Composed
) -> None:
    seen: list[BaseException] = []

    @app_async.job("shop.order", retry_limit=0)
    async def order(job: Job) -> None:
        try:
            async with job.transaction() as conn:
                await conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 1)").format(orders))
                # As recovery does when it presumes the worker dead: the attempt is failed and
                # the job handed on (here: to another worker's attempt 2).
                with psycopg.connect(conveyor_dsn, autocommit=True) as other:
                    other.execute(
                        sql.SQL("UPDATE {}.job SET attempt = 2, retry_limit = 1, "
                                "worker_id = gen_random_uuid() WHERE id = %s").format(
                            sql.Identifier(conveyor_schema)), (job.id,))  # fmt: skip
        except AttemptLost as exc:
            seen.append(exc)
            raise

    job_id = await app_async.send_async("shop.order", {})
    await app_async.drain_async(["shop.order"])
    assert len(seen) == 1
    job = await app_async.get_job_async(job_id)
    assert (job.state, job.attempt) == (JobState.ACTIVE, 2)  # the other attempt's, untouched
    assert count(conveyor_dsn, sql.SQL("SELECT count(*) FROM {}").format(orders)) == 0


def test_an_exception_after_the_commit_changes_nothing(
    app: Conveyor, orders: sql.Composed, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[str] = []
    for name in ("job.completed", "job.retried", "job.failed"):
        app.on(name)(lambda e: events.append(e.name))

    @app.job("shop.order", retry_limit=3, retry_delay=0)
    def order(job: Job) -> None:
        with job.transaction() as conn:
            conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s)").format(orders), (job.attempt,))
        raise RuntimeError("after the commit")

    job_id = app.send("shop.order", {})
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        assert app.drain(["shop.order"]) == 1
    done = app.get_job(job_id)
    assert (done.state, done.attempt, done.result) == (JobState.COMPLETED, 1, None)
    assert events == ["job.completed"]
    assert not [r for r in caplog.records if "refused" in r.getMessage()]


def test_the_callers_own_psycopg_transaction_completes_the_job_only_if_it_commits(
    app: Conveyor, conveyor_dsn: str, orders: sql.Composed
) -> None:
    @app.job("shop.order", retry_limit=1, retry_delay=0)
    def order(job: Job) -> None:
        with psycopg.connect(conveyor_dsn) as conn:
            conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(orders),
                         (job.attempt, job.attempt))  # fmt: skip
            job.complete_in(conn, result={"attempt": job.attempt})
            if job.attempt == 1:
                conn.rollback()  # the handler returns normally, but nothing committed

    job_id = app.send("shop.order", {})
    assert app.drain(["shop.order"]) == 2
    done = app.get_job(job_id)
    assert (done.state, done.attempt, done.result) == (JobState.COMPLETED, 2, {"attempt": 2})
    assert [e["type"] for e in done.errors] == ["TransactionRolledBack"]
    assert count(conveyor_dsn, sql.SQL("SELECT array_agg(id) FROM {}").format(orders)) == [2]


async def test_the_callers_own_async_psycopg_transaction_completes_the_job(
    app_async: Conveyor, conveyor_dsn: str, orders: sql.Composed
) -> None:
    @app_async.job("shop.order")
    async def order(job: Job) -> None:
        async with await psycopg.AsyncConnection.connect(conveyor_dsn) as conn:
            await conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 1)").format(orders))
            await job.complete_in_async(conn, result="paid")

    job_id = await app_async.send_async("shop.order", {})
    await app_async.drain_async(["shop.order"])
    done = await app_async.get_job_async(job_id)
    assert (done.state, done.result) == (JobState.COMPLETED, "paid")
    assert count(conveyor_dsn, sql.SQL("SELECT count(*) FROM {}").format(orders)) == 1


def test_bad_uses_are_refused_with_typed_errors_and_write_nothing(
    app: Conveyor, conveyor_dsn: str, orders: sql.Composed
) -> None:
    errors: list[type[BaseException]] = []

    @app.job("shop.order", retry_limit=0)
    def order(job: Job) -> str:
        for attempt in (
            lambda: job.complete_in(object()),
            lambda: job.complete_in(psycopg.connect(conveyor_dsn), result=float("nan")),
        ):
            try:
                attempt()
            except (InvalidOption, PayloadError) as exc:
                errors.append(type(exc))
        try:
            with job.transaction() as conn:
                conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 1)").format(orders))
                job.set_result({1, 2})  # a set: not JSON
        except PayloadError as exc:
            errors.append(type(exc))
        return "handler went on"

    @app.job("async.misuse", retry_limit=0)
    async def misuse(job: Job) -> None:
        with job.transaction():
            pass

    job_id = app.send("shop.order", {})
    misuse_id = app.send("async.misuse", {})
    app.drain()
    assert errors == [InvalidOption, PayloadError, PayloadError]
    assert count(conveyor_dsn, sql.SQL("SELECT count(*) FROM {}").format(orders)) == 0
    assert app.get_job(job_id).state is JobState.FAILED  # its transaction rolled back
    misused = app.get_job(misuse_id)
    assert misused.error is not None and misused.error["type"] == "JobStateError"
    with pytest.raises(JobStateError):
        app.get_job(job_id).transaction()
