"""SQLAlchemy: send jobs inside the transaction of a Session or Connection.

The engine must use the psycopg 3 dialect (``postgresql+psycopg://``): the job is written on the
very DBAPI connection the session holds, so it commits or rolls back with the session's work::

    with Session(engine) as session, session.begin():
        session.add(Order(id=42))
        send(app, session, "orders.confirm", {"order": 42})
    # both the order and the job exist, or neither does

A handler completes its job in the session's transaction the same way (:func:`complete`): the
order, the jobs it sends and the job's completion commit together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from conveyor.app import Conveyor
from conveyor.errors import InvalidOption
from conveyor.models import Job

__all__ = ["complete", "complete_async", "send", "send_async", "send_batch", "send_batch_async"]

# As in Conveyor.send_batch: (queue, data) or (queue, data, options).
BatchItem = tuple[str, Any] | tuple[str, Any, Mapping[str, Any]]


def send(
    app: Conveyor,
    session_or_connection: Session | Connection,
    queue: str,
    data: Any = None,
    **options: Any,
) -> UUID:
    """Enqueue one job in the session's (or connection's) transaction; return its id.

    A session begins its transaction here if it had none; the job exists only once the caller
    commits. ``options`` are those of :meth:`Conveyor.send <conveyor.Conveyor.send>`.
    """
    return app.send(queue, data, connection=_driver(session_or_connection), **options)


def send_batch(
    app: Conveyor, session_or_connection: Session | Connection, jobs: Iterable[BatchItem]
) -> list[UUID]:
    """Enqueue many jobs in the session's transaction; see :meth:`Conveyor.send_batch`."""
    return app.send_batch(jobs, connection=_driver(session_or_connection))


async def send_async(
    app: Conveyor,
    session_or_connection: AsyncSession | AsyncConnection,
    queue: str,
    data: Any = None,
    **options: Any,
) -> UUID:
    """Enqueue one job in an :class:`AsyncSession`'s (or :class:`AsyncConnection`'s)
    transaction; the async twin of :func:`send`."""
    driver = await _driver_async(session_or_connection)
    return await app.send_async(queue, data, connection=driver, **options)


async def send_batch_async(
    app: Conveyor,
    session_or_connection: AsyncSession | AsyncConnection,
    jobs: Iterable[BatchItem],
) -> list[UUID]:
    """Enqueue many jobs in an async session's transaction; see :func:`send_batch`."""
    driver = await _driver_async(session_or_connection)
    return await app.send_batch_async(jobs, connection=driver)


def complete(job: Job, session_or_connection: Session | Connection, result: Any = None) -> None:
    """Inside a running handler: complete ``job`` in the session's (or connection's)
    transaction, with ``result``; it is completed if and only if the caller commits, before the
    handler returns. See :meth:`Job.complete_in <conveyor.Job.complete_in>`."""
    job.complete_in(_driver(session_or_connection), result)


async def complete_async(
    job: Job, session_or_connection: AsyncSession | AsyncConnection, result: Any = None
) -> None:
    """The async twin of :func:`complete`, for an :class:`AsyncSession` or
    :class:`AsyncConnection`."""
    await job.complete_in_async(await _driver_async(session_or_connection), result)


def _driver(session_or_connection: Session | Connection) -> Any:
    """The psycopg connection under a session (its transaction begun) or a connection."""
    if isinstance(session_or_connection, Session):
        connection = session_or_connection.connection()
    elif isinstance(session_or_connection, Connection):
        connection = session_or_connection
    else:
        raise InvalidOption(
            "expected a SQLAlchemy Session or Connection, got "
            f"{type(session_or_connection).__name__}"
        )
    if not connection.in_transaction():
        # Begun here so that SQLAlchemy knows of the transaction the job opens, and commits it.
        connection.begin()
    return connection.connection.driver_connection


async def _driver_async(session_or_connection: AsyncSession | AsyncConnection) -> Any:
    """The psycopg async connection under an async session or connection."""
    if isinstance(session_or_connection, AsyncSession):
        connection = await session_or_connection.connection()
    elif isinstance(session_or_connection, AsyncConnection):
        connection = session_or_connection
    else:
        raise InvalidOption(
            "expected a SQLAlchemy AsyncSession or AsyncConnection, got "
            f"{type(session_or_connection).__name__}"
        )
    if not connection.in_transaction():
        await connection.begin()
    raw = await connection.get_raw_connection()
    return raw.driver_connection
