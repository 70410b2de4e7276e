"""Orders stored with SQLAlchemy; the job that confirms an order is sent in the same transaction,
so there is never an order without its job, nor a job for an order that was rolled back.

Run it (PostgreSQL at CONVEYOR_DATABASE_URL, Conveyor's schema migrated with ``conveyor migrate``)::

    python shop.py

The shop's tables live in a schema of their own (``SHOP_SCHEMA``, default ``shop``), not in
``public`` of your database: the engines map the models' schema-less tables onto it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from uuid import UUID

from sqlalchemy import String, create_engine, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.schema import CreateSchema

from conveyor import Conveyor, Job
from conveyor.integrations.sqlalchemy import send, send_async


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200))
    confirmed: Mapped[bool] = mapped_column(default=False)


def sqlalchemy_url(dsn: str) -> str:
    """A libpq URL as SQLAlchemy's psycopg 3 dialect wants it."""
    return make_url(dsn).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


class Shop:
    """Places orders; a Conveyor handler confirms them in the background."""

    def __init__(self, app: Conveyor, engine: Engine) -> None:
        self.app = app
        self.engine = engine
        app.job("orders.confirm", self.confirm)

    def place_order(self, email: str) -> tuple[int, UUID]:
        with Session(self.engine) as session, session.begin():
            order = Order(email=email)
            session.add(order)
            session.flush()  # assigns order.id
            job_id = send(self.app, session, "orders.confirm", {"order": order.id})
            return order.id, job_id

    async def place_order_async(self, engine: AsyncEngine, email: str) -> tuple[int, UUID]:
        async with AsyncSession(engine) as session, session.begin():
            order = Order(email=email)
            session.add(order)
            await session.flush()
            job_id = await send_async(self.app, session, "orders.confirm", {"order": order.id})
            return order.id, job_id

    def confirm(self, job: Job) -> dict[str, Any]:
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(Order).where(Order.id == job.data["order"]).values(confirmed=True)
            )
        return {"confirmed": job.data["order"]}

    def is_confirmed(self, order_id: int) -> bool | None:
        with Session(self.engine) as session:
            return session.scalar(select(Order.confirmed).where(Order.id == order_id))


async def main() -> None:
    dsn = os.environ.get("CONVEYOR_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    app = Conveyor(dsn, schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))
    tables = {None: os.environ.get("SHOP_SCHEMA", "shop")}
    engine = create_engine(sqlalchemy_url(dsn)).execution_options(schema_translate_map=tables)
    async_engine = create_async_engine(sqlalchemy_url(dsn)).execution_options(
        schema_translate_map=tables
    )
    with engine.begin() as conn:
        conn.execute(CreateSchema(tables[None], if_not_exists=True))
    Base.metadata.create_all(engine)
    shop = Shop(app, engine)
    order_id, _ = shop.place_order("a@b.c")
    other_id, _ = await shop.place_order_async(async_engine, "d@e.f")
    await app.drain_async()
    print(order_id, shop.is_confirmed(order_id), other_id, shop.is_confirmed(other_id))
    await async_engine.dispose()
    await app.close_async()


if __name__ == "__main__":
    asyncio.run(main())
