"""Completing a job in its handler's own transaction.

``async with job.transaction() as conn`` (``with`` in a ``def`` handler) opens a transaction on a
connection of the worker's handler pool; at the end of the block the attempt's completion is
written in it, guarded by worker and attempt like every acknowledgement, and the transaction
commits: the handler's writes, the jobs it sent on ``conn`` and the completion are one commit.
``job.complete_in(conn)`` writes the completion in a transaction the caller owns (psycopg,
SQLAlchemy, Django), which the caller commits.

An attempt's transaction ends in one of these ways, and the worker acts on each once the
handler returned (:meth:`Transactions.settle`):

- committed: the job is completed; the worker writes no outcome of its own, so a crash after the
  commit loses nothing and an exception after it changes nothing;
- rolled back (an exception in the block, or the attempt lost its job: :class:`AttemptLost`):
  nothing was written; the attempt fails as any failed attempt does;
- not known to the worker (the caller's own transaction, or a commit whose answer was lost): the
  worker asks PostgreSQL (``pg_xact_status`` of the transaction that wrote the completion).
  When it cannot tell, it writes a failed attempt, guarded as usual: if the completion did
  commit, the job is no longer held and that write changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any
from uuid import UUID

from conveyor._store.store import Store
from conveyor._store.store_async import AsyncStore
from conveyor._store.worker_store import Ack
from conveyor.errors import AttemptLost, DatabaseUnavailable, JobStateError
from conveyor.options import encode_payload

if TYPE_CHECKING:
    from conveyor.worker.runtime import Runtime

log = logging.getLogger("conveyor.worker")

# How an attempt's last transaction stands.
OPEN = "open"  # the block is running
WRITTEN = "written"  # the completion is written; whether it committed is for PostgreSQL to say
COMMITTED = "committed"
ROLLED_BACK = "rolled back"
UNKNOWN = "unknown"  # the database could not say whether it committed


@dataclass(slots=True)
class Completion:
    """The completion an attempt wrote (or is about to write) in a transaction of its own."""

    state: str
    result: Any = None
    xid: str | None = None


class Transactions:
    """Handler transactions of one worker: a pool of their own (a transaction held by a handler
    never takes a connection the completer or the heartbeat needs), opened on first use."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        worker_id: UUID,
        *,
        size: int,
        prepare: bool,
        clock: Callable[[], datetime | None],
        max_payload_bytes: int,
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self._worker_id = worker_id
        self._size = size
        self._prepare = prepare
        self._clock = clock
        self._limit = max_payload_bytes
        self._async: AsyncStore | None = None
        self._sync: Store | None = None
        self._lock = threading.Lock()

    def _store_args(self) -> dict[str, Any]:
        return {
            "min_size": 1,
            "max_size": self._size,
            "application_name": f"conveyor-handler {self._schema}",
            "listen_dsn": None,
            "prepare": self._prepare,
        }

    def _async_store(self) -> AsyncStore:
        if self._async is None:
            self._async = AsyncStore(self._dsn, self._schema, **self._store_args())
        return self._async

    def _sync_store(self) -> Store:
        with self._lock:  # handler threads may ask at once
            if self._sync is None:
                self._sync = Store(self._dsn, self._schema, **self._store_args())
            return self._sync

    def begin(self, runtime: Runtime) -> JobTransaction:
        """The context manager behind ``job.transaction()``."""
        return JobTransaction(self, runtime)

    def _encode(self, result: Any) -> str:
        return "null" if result is None else encode_payload(result, self._limit)

    @staticmethod
    def _check_free(runtime: Runtime) -> None:
        done = runtime.completion
        if done is not None and done.state in (OPEN, WRITTEN, COMMITTED):
            raise JobStateError(
                f"attempt {runtime.attempt} of job {runtime.job_id} already completes in a "
                "transaction of its own"
            )

    @staticmethod
    def _written(runtime: Runtime, xid: str | None, done: Completion) -> None:
        if xid is None:
            raise AttemptLost(
                f"attempt {runtime.attempt} of job {runtime.job_id} no longer holds the job "
                "(cancelled, recovered or expired): its transaction is rolled back"
            )
        # If the commit's answer is lost, PostgreSQL still knows: settle() asks it.
        done.state, done.xid = WRITTEN, xid

    async def _write_async(self, runtime: Runtime, conn: Any, done: Completion) -> None:
        xid = await self._async_store().job_complete_in(
            runtime.job_id, runtime.attempt, self._worker_id, self._encode(done.result),
            self._clock(), conn,
        )  # fmt: skip
        self._written(runtime, xid, done)

    def _write(self, runtime: Runtime, conn: Any, done: Completion) -> None:
        xid = self._sync_store().job_complete_in(
            runtime.job_id, runtime.attempt, self._worker_id, self._encode(done.result),
            self._clock(), conn,
        )  # fmt: skip
        self._written(runtime, xid, done)

    async def complete_in_async(self, runtime: Runtime, conn: Any, result: Any) -> None:
        """Write the completion in the transaction of ``conn`` (a psycopg AsyncConnection)."""
        self._check_free(runtime)
        done = Completion(OPEN, result)
        await self._write_async(runtime, conn, done)  # a result JSON cannot store: before it
        runtime.completion = done

    def complete_in(self, runtime: Runtime, conn: Any, result: Any) -> None:
        """Write the completion in the transaction of ``conn`` (a psycopg Connection)."""
        self._check_free(runtime)
        done = Completion(OPEN, result)
        self._write(runtime, conn, done)
        runtime.completion = done

    @asynccontextmanager
    async def _block_async(self, runtime: Runtime) -> AsyncIterator[Any]:
        self._check_free(runtime)
        runtime.completion = done = Completion(OPEN)
        try:
            async with self._async_store().transaction() as conn:
                yield conn
                done.result = runtime.result
                await self._write_async(runtime, conn, done)
            done.state = COMMITTED
        except BaseException:
            if done.state == OPEN:
                done.state = ROLLED_BACK
            raise

    @contextmanager
    def _block(self, runtime: Runtime) -> Iterator[Any]:
        self._check_free(runtime)
        runtime.completion = done = Completion(OPEN)
        try:
            with self._sync_store().transaction() as conn:
                yield conn
                done.result = runtime.result
                self._write(runtime, conn, done)
            done.state = COMMITTED
        except BaseException:
            if done.state == OPEN:
                done.state = ROLLED_BACK
            raise

    async def settle(self, runtime: Runtime, done: Completion) -> str:
        """How the attempt's last transaction ended: committed, rolled back, open (the handler
        returned before it ended) or unknown (the database could not say)."""
        if done.state in (COMMITTED, ROLLED_BACK):
            return done.state
        if done.xid is None:
            return OPEN
        try:
            status = await self._async_store().xact_status(done.xid)
        except DatabaseUnavailable as exc:
            log.warning("job %s attempt %d: could not ask whether its transaction committed: %s",
                        runtime.job_id, runtime.attempt, exc)  # fmt: skip
            return UNKNOWN
        if status == "committed":
            done.state = COMMITTED
        elif status == "aborted":
            done.state = ROLLED_BACK
        return OPEN if done.state == WRITTEN else done.state

    async def outcome(
        self, runtime: Runtime, ack: Ack | None, fail: Callable[[BaseException, str], Ack]
    ) -> Ack | None:
        """What the worker writes for an attempt that used a transaction of its own: nothing
        once that transaction committed (the job is completed, whatever the handler did next);
        a failed attempt instead of the handler's completion when it did not commit."""
        done = runtime.completion
        assert done is not None
        ended = await self.settle(runtime, done)
        if ended == COMMITTED:
            if ack is not None and ack.outcome == "completed" and ack.result != "null":
                log.warning("job %s attempt %d completed in its transaction; the handler's "
                            "return value is not stored (use job.set_result() in the block)",
                            runtime.job_id, runtime.attempt)  # fmt: skip
            return None
        if ended == OPEN and done.xid is not None:
            # An outcome written now would wait for that transaction's row lock, holding up
            # every other outcome of this worker: recovery settles the job after expire_in.
            log.warning("job %s attempt %d: the handler returned before the transaction that "
                        "completes it ended; if it never commits, the job is recovered after "
                        "its expire_in", runtime.job_id, runtime.attempt)  # fmt: skip
            return None
        if ack is None or ack.outcome != "completed":
            return ack
        why = "was rolled back" if ended == ROLLED_BACK else "may not have committed"
        return fail(
            JobStateError(f"the transaction that was to complete this attempt {why}"),
            "TransactionRolledBack",
        )

    async def close(self) -> None:
        """Close the handler pools (after the last handler returned)."""
        if self._async is not None:
            await self._async.close()
        if self._sync is not None:
            await asyncio.to_thread(self._sync.close)


class JobTransaction:
    """``async with job.transaction() as conn`` in an ``async def`` handler, ``with`` in a
    ``def`` handler: ``conn`` is a psycopg connection in a transaction that also completes the
    job, all at the end of the block."""

    def __init__(self, source: Transactions, runtime: Runtime) -> None:
        self._source = source
        self._runtime = runtime
        self._async_cm: Any = None
        self._sync_cm: Any = None

    async def __aenter__(self) -> Any:
        if not self._runtime.on_worker_loop():
            raise JobStateError(
                "async with job.transaction() works in an async def handler; use "
                "`with job.transaction()` in a def handler"
            )
        self._async_cm = self._source._block_async(self._runtime)
        return await self._async_cm.__aenter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return bool(await self._async_cm.__aexit__(kind, exc, tb))

    def __enter__(self) -> Any:
        if self._runtime.on_worker_loop():
            raise JobStateError(
                "`with job.transaction()` would block the worker's event loop in an async def "
                "handler: use `async with job.transaction()`"
            )
        self._sync_cm = self._source._block(self._runtime)
        return self._sync_cm.__enter__()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return bool(self._sync_cm.__exit__(kind, exc, tb))
