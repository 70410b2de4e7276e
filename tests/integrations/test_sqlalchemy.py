"""SQLAlchemy sessions and connections, sync and async (psycopg 3 dialect): a job sent through
them exists if and only if their transaction commits."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateSchema, DropSchema

from conveyor import Conveyor, InvalidOption, Job, JobNotFound, JobState
from conveyor.integrations.sqlalchemy import (
    complete,
    complete_async,
    send,
    send_async,
    send_batch,
    send_batch_async,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sqlalchemy_app"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from shop import Base, Order, Shop, sqlalchemy_url  # noqa: E402


@pytest.fixture
def tables(conveyor_dsn: str, conveyor_schema: str) -> Iterator[str]:
    """A schema of this test's own for the example's tables (Conveyor's keeps only its own)."""
    name = f"{conveyor_schema}_shop"
    admin = create_engine(sqlalchemy_url(conveyor_dsn))
    with admin.begin() as conn:
        conn.execute(DropSchema(name, cascade=True, if_exists=True))
        conn.execute(CreateSchema(name))
    yield name
    with admin.begin() as conn:
        conn.execute(DropSchema(name, cascade=True, if_exists=True))
    admin.dispose()


@pytest.fixture
def engine(conveyor_dsn: str, tables: str) -> Iterator[Engine]:
    found = create_engine(sqlalchemy_url(conveyor_dsn)).execution_options(
        schema_translate_map={None: tables}
    )
    Base.metadata.create_all(found)
    yield found
    found.dispose()


@pytest.fixture
async def async_engine(
    conveyor_dsn: str, engine: Engine, tables: str
) -> AsyncIterator[AsyncEngine]:
    found = create_async_engine(sqlalchemy_url(conveyor_dsn)).execution_options(
        schema_translate_map={None: tables}
    )
    yield found
    await found.dispose()


def orders(engine: Engine) -> int:
    with Session(engine) as session:
        return session.scalar(select(func.count()).select_from(Order)) or 0


def test_a_session_commits_the_order_and_its_job_together(app: Conveyor, engine: Engine) -> None:
    shop = Shop(app, engine)
    order_id, job_id = shop.place_order("a@b.c")
    assert app.get_job(job_id).data == {"order": order_id}
    assert app.drain() == 1
    assert shop.is_confirmed(order_id) is True
    assert app.get_job(job_id).result == {"confirmed": order_id}


def test_a_rolled_back_session_leaves_neither_order_nor_job(app: Conveyor, engine: Engine) -> None:
    with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
        session.add(Order(email="a@b.c"))
        session.flush()
        job_id = send(app, session, "orders.confirm", {"order": 1})
        raise RuntimeError("payment refused")
    with pytest.raises(JobNotFound):
        app.get_job(job_id)
    assert orders(engine) == 0


def test_a_session_without_a_transaction_begins_one(app: Conveyor, engine: Engine) -> None:
    with Session(engine) as session:
        job_id = send(app, session, "q", {"n": 1})
        assert session.in_transaction()
        with pytest.raises(JobNotFound):  # not committed yet
            app.get_job(job_id)
        session.commit()
    assert app.get_job(job_id).state is JobState.CREATED


def test_a_connection_joins_too(app: Conveyor, engine: Engine) -> None:
    with engine.connect() as conn:
        dropped = send(app, conn, "q", {"n": 1})
        assert conn.in_transaction()
        conn.rollback()
        kept = send_batch(app, conn, [("q", {"n": 2}), ("q", {"n": 3}, {"priority": 7})])
        conn.commit()
    with pytest.raises(JobNotFound):
        app.get_job(dropped)
    assert [app.get_job(i).priority for i in kept] == [0, 7]


def test_other_objects_are_refused(app: Conveyor, engine: Engine) -> None:
    with pytest.raises(InvalidOption, match="Session or Connection"):
        send(app, engine, "q", {})  # type: ignore[arg-type]


async def test_an_async_session_commits_and_rolls_back(
    app_async: Conveyor, engine: Engine, async_engine: AsyncEngine
) -> None:
    shop = Shop(app_async, engine)
    order_id, job_id = await shop.place_order_async(async_engine, "a@b.c")
    assert (await app_async.get_job_async(job_id)).data == {"order": order_id}

    with pytest.raises(RuntimeError):
        async with AsyncSession(async_engine) as session, session.begin():
            session.add(Order(email="d@e.f"))
            dropped = await send_async(app_async, session, "orders.confirm", {"order": 0})
            raise RuntimeError("roll back")
    with pytest.raises(JobNotFound):
        await app_async.get_job_async(dropped)

    assert await app_async.drain_async() == 1
    assert shop.is_confirmed(order_id) is True
    assert orders(engine) == 1


async def test_an_async_connection_joins_too(
    app_async: Conveyor, async_engine: AsyncEngine
) -> None:
    async with async_engine.connect() as conn:
        dropped = await send_async(app_async, conn, "q", {"n": 1})
        assert conn.in_transaction()
        await conn.rollback()
        kept = await send_batch_async(app_async, conn, [("q", {"n": 2})])
        await conn.commit()
    with pytest.raises(JobNotFound):
        await app_async.get_job_async(dropped)
    assert (await app_async.get_job_async(kept[0])).data == {"n": 2}


def test_a_handler_completes_its_job_in_the_sessions_transaction(
    app: Conveyor, engine: Engine
) -> None:
    @app.job("orders.place", retry_limit=1, retry_delay=0)
    def place(job: Job) -> None:
        with Session(engine) as session, session.begin():
            order = Order(email=job.data["email"])
            session.add(order)
            session.flush()
            send(app, session, "orders.mail", {"order": order.id})
            complete(job, session, result={"order": order.id})
            if job.attempt == 1:
                session.rollback()  # nothing of attempt 1 is kept: it fails

    job_id = app.send("orders.place", {"email": "a@b.c"})
    assert app.drain(["orders.place"]) == 2
    done = app.get_job(job_id)
    assert (done.state, done.attempt) == (JobState.COMPLETED, 2)
    assert [e["type"] for e in done.errors] == ["TransactionRolledBack"]
    assert orders(engine) == 1
    assert [j.data for j in app.list_jobs(queue="orders.mail")] == [done.result]


async def test_an_async_handler_completes_its_job_in_an_async_sessions_transaction(
    app_async: Conveyor, engine: Engine, async_engine: AsyncEngine
) -> None:
    @app_async.job("orders.place")
    async def place(job: Job) -> None:
        async with AsyncSession(async_engine) as session, session.begin():
            session.add(Order(email=job.data["email"]))
            await complete_async(job, session, result="placed")

    job_id = await app_async.send_async("orders.place", {"email": "a@b.c"})
    await app_async.drain_async(["orders.place"])
    done = await app_async.get_job_async(job_id)
    assert (done.state, done.result) == (JobState.COMPLETED, "placed")
    assert orders(engine) == 1
