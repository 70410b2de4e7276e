# Generated from src/conveyor/_store/store_async.py
# by tools/async_to_sync.py: edit that file, not this one.
"""The async store: one method per named query, and the connection pool they run on.

Every method takes an optional ``conn``: the caller's own connection, whose open transaction the
statement joins (transactional enqueue). Without one, the statement runs on a pooled autocommit
connection: one round trip, committed on return.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID, uuid4

from psycopg import Connection, Error, sql
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import ConnectionPool, PoolTimeout

from conveyor import reporting
from conveyor._store import rows
from conveyor._store.connections import (
    COPY_MIN,
    COPY_TYPES,
    closed_by_server,
    connect_kwargs,
    copy_jsonb_text,
    newest_first,
    replaced,
    standard_json,
    unavailable,
    utc_session,
)
from conveyor._store.errors import reraise, translated
from conveyor._store.queries import READS, queries
from conveyor._store.waiters import done_waiter
from conveyor.bulk import BulkFilter
from conveyor.config import (
    LIST_FLOOR_PAGES,
    LIST_FLOOR_SCAN,
    LIST_NARROW_WINDOWS,
    LIST_WINDOW,
    STATS_TAIL_LIMIT,
    STATS_WAIT_BOUNDS_MS,
    VACUUM_OUTGROWN_FACTOR,
    VACUUM_OUTGROWN_ROWS,
)
from conveyor.errors import ConveyorError, DatabaseUnavailable, InvalidOption
from conveyor.models import Job, Queue, Schedule, StatsMinute, WorkerInfo
from conveyor.options import JobSpec

Conn = Connection[Any]
# A store keeps copies of at most this many queues: past it, it forgets them all and copies
# again those it sends to.
QUEUE_COPIES_MAX = 1024
# How often wait_for looks at a job when it cannot LISTEN (behind PgBouncer, no listen_dsn).
WAIT_POLL_INTERVAL = 0.2
# A wait's registration outlives its timeout by this much before anyone may delete it.
WAITER_GRACE = 30.0
# The longest a wait_for goes without reading its job again (see job_wait).
WAIT_RECHECK = 1.0
# Seconds a caller waits for a pooled connection before asking the server directly whether it
# can be reached: an outage surfaces at once, in libpq's words, not after the pool's timeout.
POOL_WAIT_SLICE = 1.0
# Seconds the pool keeps retrying a connection in the background before it gives up until the
# next request: past this, its growing backoff would delay recovery once the server is back.
POOL_RECONNECT_TIMEOUT = 3.0
# Seconds partition DDL waits for a lock before it gives up until the next pass.
ARCHIVE_LOCK_TIMEOUT = 2.0
# Rows of the history before 0012 moved per statement: about a tenth of a second each.
LEGACY_BATCH = 2500
# What every read of the counters passes: the wait buckets, and how many history rows finished
# since the rollup's watermark it may read.
# The states of finished jobs: the history holds no other.
FINISHED_STATES = frozenset({"completed", "cancelled", "failed"})
_COUNTED = {"bounds": list(STATS_WAIT_BOUNDS_MS), "tail": STATS_TAIL_LIMIT}


class Store:
    """Runs Conveyor's named queries against one schema."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        application_name: str | None = None,
        timeout: float = 30.0,
        listen_dsn: str | None = "",
        prepare: bool = True,
        utc: bool = False,
    ) -> None:
        self.schema = schema
        # Where LISTEN connections go; None: nowhere (behind PgBouncer without a direct DSN).
        self.listen_dsn = dsn if listen_dsn == "" else listen_dsn
        self.channel = f"conveyor:{schema}"
        self.cancel_channel = f"conveyor:{schema}:cancel"
        self.done_channel = f"conveyor:{schema}:done"
        self._dsn = dsn
        self._defaults_cache: tuple[dict[str, Any], str] | None = None
        # Per queue, what a send of one job reads of it (job_insert_resolved).
        self._copies: dict[str, rows.QueueCopy] = {}
        self._queries = queries(schema)
        self._timeout = timeout
        self._connect_kwargs = connect_kwargs(
            dsn,
            autocommit=True,
            application_name=application_name or f"conveyor {schema}",
            # PgBouncer in transaction mode hands each transaction to any server connection,
            # where a statement prepared on another one does not exist.
            **({} if prepare else {"prepare_threshold": None}),
        )
        self._pool = ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            open=False,
            timeout=timeout,
            kwargs=self._connect_kwargs,
            reconnect_timeout=POOL_RECONNECT_TIMEOUT,
            name=f"conveyor-{schema}",
            # Not behind PgBouncer in transaction mode, where a SET would reach other clients.
            configure=utc_session if utc and prepare else None,
        )
        newest_first(self._pool)
        self._closed = False
        # Shared by every wait_for of this store; None: wait_for polls (behind PgBouncer).
        self._waiter = (
            None
            if self.listen_dsn is None
            else done_waiter(
                self.listen_dsn,
                self.done_channel,
                {**self._connect_kwargs, "application_name": f"conveyor wait_for {schema}"},
            )
        )

    @contextmanager
    def connection(self, conn: Conn | None = None) -> Iterator[Conn]:
        """The caller's connection if given, else one from the pool (opened on first use)."""
        if conn is not None:
            if not isinstance(conn, Connection):
                raise InvalidOption(
                    f"connection= must be a psycopg Connection here, got {type(conn).__name__}"
                )
            yield conn
            return
        pooled = self._checkout()
        try:
            with pooled:
                yield pooled
        finally:
            self._pool.putconn(pooled)

    def _checkout(self) -> Conn:
        """A live pooled connection. A connection the server closed while it sat in the pool
        (restart, failover) is replaced before anything is sent on it, so it fails no call; a
        server that cannot be reached is reported within seconds, with its cause."""
        if self._closed:
            raise ConveyorError("this Conveyor app was closed")
        if self._pool.closed:
            # Before the pool retries in the background: the first error, in its own words.
            self._reach()
            self._pool.open()
        deadline = time.monotonic() + self._timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DatabaseUnavailable(
                    f"database unavailable: no pooled connection free after {self._timeout:g}s "
                    f"(all {self._pool.max_size} in use: raise pool_max_size?)"
                )
            try:
                pooled = self._pool.getconn(timeout=min(remaining, POOL_WAIT_SLICE))
            except PoolTimeout:
                self._reach()
                continue
            if not closed_by_server(pooled):
                return pooled
            # Closed, so that the pool replaces it instead of lending it again.
            replaced(pooled)
            pooled.close()
            self._pool.putconn(pooled)

    def _reach(self) -> None:
        """Connect once outside the pool: DatabaseUnavailable with libpq's words if that fails."""
        try:
            probe = Connection.connect(self._dsn, **self._connect_kwargs)
        except Error as exc:
            raise unavailable(exc) from None
        probe.close()

    def close(self) -> None:
        """Close the pool; the store cannot be used afterwards."""
        self._closed = True
        if self._waiter is not None:
            self._waiter.close()
        self._pool.close()

    def _rows(self, name: str, params: dict[str, Any], conn: Conn | None) -> list[dict[str, Any]]:
        return self._fetch(name, params, conn, dict_row)

    def _fetch(
        self, name: str, params: dict[str, Any], conn: Conn | None, factory: Any
    ) -> list[Any]:
        query = self._queries[name]
        # A read is repeated once on another connection if the one it ran on broke under it.
        repeat = conn is None and name in READS
        while True:
            used: Conn | None = None
            try:
                with self.connection(conn) as used, used.cursor(row_factory=factory) as cur:
                    if conn is not None:
                        standard_json(cur.adapters)
                    cur.execute(query.sql, params)
                    return cur.fetchall() if cur.description is not None else []
            except Error as exc:
                if repeat and used is not None and used.broken:
                    repeat = False
                    continue
                ours = translated(exc, self.schema)
                if ours is None:
                    raise
                raise ours from exc

    def job_insert_many(
        self,
        specs: Sequence[JobSpec],
        defaults: dict[str, Any],
        now: datetime | None,
        conn: Conn | None = None,
        meta: str | None = None,
    ) -> list[tuple[UUID | None, bool]]:
        """Insert jobs; per spec, in order: the id it resolved to (None: ask again) and if new.

        ``meta`` (a JSON object's text) is stored on the jobs inserted, in the same transaction.
        """
        if meta is None:
            return self._insert(specs, defaults, now, conn)
        with self.connection(conn) as used, used.transaction():
            found = self._insert(specs, defaults, now, used)
            ids = [job_id for job_id, inserted in found if inserted]
            if ids:
                self._rows("job_set_meta", {"ids": ids, "meta": meta}, used)
            return found

    def _insert(
        self,
        specs: Sequence[JobSpec],
        defaults: dict[str, Any],
        now: datetime | None,
        conn: Conn | None,
    ) -> list[tuple[UUID | None, bool]]:
        if any(s.linked for s in specs):
            params = rows.insert_params(specs, self._defaults_json(defaults), now)
            found = self._rows("job_insert_linked", params, conn)
        elif len(specs) == 1:
            params = rows.insert_one_params(specs[0], self._defaults_json(defaults), now)
            found = self._rows("job_insert_one", params, conn)
        else:
            params = rows.insert_params(specs, self._defaults_json(defaults), now)
            found = self._rows("job_insert_many", params, conn)
        return rows.insert_results(specs, found)

    def job_insert_plain(
        self,
        specs: Sequence[JobSpec],
        defaults: dict[str, Any],
        now: datetime | None,
        conn: Conn | None = None,
        meta: str | None = None,
    ) -> bool:
        """Insert jobs that all take the fast path (``JobSpec.plain``), with ``meta``, in one
        plain statement; False when nothing was inserted because a queue of theirs keeps a
        queued key (short, stately): send them through :meth:`job_insert_many` then."""
        if len(specs) == 1:
            one = specs[0]
            return self._insert_one(one.id, one.queue, one.data, one, defaults, now, conn, meta)
        params = rows.plain_params(specs, self._defaults_json(defaults), now, meta)
        return self._insert_plain("job_insert_plain_many", params, conn)

    def job_insert_bare(
        self,
        ids: list[UUID],
        queues: list[str],
        data: list[str],
        defaults: dict[str, Any],
        now: datetime | None,
        conn: Conn | None = None,
    ) -> bool:
        """:meth:`job_insert_plain` for jobs that set no option, given as columns; a batch of
        ``COPY_MIN`` jobs or more is copied in (:meth:`_copy_bare`)."""
        if len(ids) == 1:
            return self._insert_one(ids[0], queues[0], data[0], None, defaults, now, conn)
        defaults_json = self._defaults_json(defaults)
        if len(ids) >= COPY_MIN:
            return self._copy_bare(ids, queues, data, defaults_json, now, conn)
        params = rows.bare_params(ids, queues, data, defaults_json, now)
        return self._insert_plain("job_insert_plain_many", params, conn)

    def _copy_bare(
        self,
        ids: list[UUID],
        queues: list[str],
        data: list[str],
        defaults: str,
        now: datetime | None,
        conn: Conn | None,
    ) -> bool:
        """Store jobs that set no option by a binary COPY, after one statement that resolves
        their queues' options and notifies them (``job_copy_resolve``), in one transaction: the
        rows ``job_insert_plain_many`` would store, a batch of 10,000 in about 30% less time
        (bench/RESULTS.md). False, with nothing stored, when a queue of theirs keeps a queued
        key."""
        distinct = list(dict.fromkeys(queues))
        params = {
            "queues": distinct, "defaults": defaults, "now": now, "channel": self.channel,
        }  # fmt: skip
        try:
            with self.connection(conn) as used:
                # A caller's connection in autocommit would commit the NOTIFY before the rows.
                atomic = used.transaction() if used.autocommit else nullcontext()
                with atomic, used.cursor(row_factory=tuple_row) as cur:
                    cur.execute(self._queries["job_copy_resolve"].sql, params)
                    # Each queue's columns after id, queue, state and data, in job_copy_in's
                    # order: run_at and created_at are both the time the batch is created at.
                    rest = {
                        queue: (priority, at, 0, limit, delay, backoff, delay_max, expire,
                                retention, dead_letter, at, fair_key)
                        for (queue, priority, limit, delay, backoff, delay_max, expire, retention,
                             dead_letter, fair_key, at, _notified) in cur.fetchall()
                    }  # fmt: skip
                    if not rest:
                        return False
                    copy_jsonb_text(cur.adapters)
                    with cur.copy(self._queries["job_copy_in"].sql) as copy:
                        copy.set_types(list(COPY_TYPES))
                        for job_id, queue, payload in zip(ids, queues, data, strict=True):
                            copy.write_row((job_id, queue, "created", payload, *rest[queue]))
        except Error as exc:
            reraise(exc, self.schema)
        return True

    def _insert_one(
        self,
        job_id: UUID,
        queue: str,
        data: str,
        spec: JobSpec | None,
        defaults: dict[str, Any],
        now: datetime | None,
        conn: Conn | None,
        meta: str | None = None,
    ) -> bool:
        """One job (its ``spec``, or None when it sets no option) by the fast path: by
        ``job_insert_resolved`` while this store's copy of its queue is current, else by
        ``job_insert_plain``, whose answer renews the copy (see job.sql for when it gives
        none)."""
        copy = self._copies.get(queue)
        if copy is not None and copy.defaults is defaults:
            params = rows.resolved_one_params(copy, job_id, data, now, meta, spec)
            if self._insert_plain("job_insert_resolved", params, conn):
                return True
            self._copies.pop(queue, None)
        params = rows.plain_one_params(
            spec or JobSpec(job_id, queue, data), self._defaults_json(defaults), now, meta
        )
        answer = self._row("job_insert_plain", self._waking(params, conn), conn)
        copy = rows.queue_copy(queue, answer, defaults)
        if copy is not None:
            if len(self._copies) >= QUEUE_COPIES_MAX:
                self._copies.clear()
            self._copies[queue] = copy
        return bool(answer[0])

    def _insert_plain(self, name: str, params: dict[str, Any], conn: Conn | None) -> bool:
        """Run a fast-path insert that returns how many jobs it stored."""
        return bool((self._row(name, self._waking(params, conn), conn))[0])

    def _waking(self, params: dict[str, Any], conn: Conn | None) -> dict[str, Any]:
        """A fast-path insert's parameters with those of the wake-up it sends on this store's
        channel: only to workers waiting for its queues when it commits by itself, always on
        the caller's connection (whose commit may come much later; see "Waking the workers"
        in job.sql)."""
        params["channel"] = self.channel
        params["quiet"] = conn is None
        return params

    def _row(self, name: str, params: dict[str, Any], conn: Conn | None) -> tuple[Any, ...]:
        """The one row a write returns, with less ado than :meth:`_fetch` (the send's fast
        path): never repeated, its error translated as any other."""
        try:
            with self.connection(conn) as used, used.cursor(row_factory=tuple_row) as cur:
                cur.execute(self._queries[name].sql, params)
                row = cur.fetchone()
        except Error as exc:
            reraise(exc, self.schema)
        assert row is not None, name
        return row

    def _defaults_json(self, defaults: dict[str, Any]) -> str:
        if self._defaults_cache is None or self._defaults_cache[0] is not defaults:
            self._defaults_cache = (defaults, rows.json_text(defaults))
        return self._defaults_cache[1]

    def job_get(self, job_id: UUID, conn: Conn | None = None) -> Job | None:
        """The job with this id, live or finished."""
        found = self._rows("job_get", {"id": job_id}, conn)
        return rows.job(found[0]) if found else None

    def job_results(self, job_ids: Sequence[UUID], conn: Conn | None = None) -> dict[UUID, Any]:
        """The results of those of these jobs that completed, by id, in the order given."""
        found = self._rows("job_results", {"ids": list(job_ids)}, conn)
        results = {r["id"]: r["result"] for r in found}
        return {i: results[i] for i in job_ids if i in results}

    @contextmanager
    def transaction(self) -> Iterator[Conn]:
        """A pooled connection in a transaction: committed when the block ends, rolled back if
        it raises (the commit's own failure included)."""
        with self.connection() as conn, conn.transaction():
            yield conn

    def job_complete_in(
        self,
        job_id: UUID,
        attempt: int,
        worker: UUID,
        result: str,
        now: datetime | None,
        conn: Conn,
    ) -> str | None:
        """Complete an attempt in ``conn``'s transaction, guarded like every ack; the id of that
        transaction, or None if the attempt no longer holds its job (nothing was written)."""
        params = {"id": job_id, "attempt": attempt, "worker": worker, "result": result, "now": now}
        found = self._rows("job_complete_in", params, conn)
        return str(found[0]["xid"]) if found else None

    def xact_status(self, xid: str) -> str | None:
        """Whether a transaction committed: ``committed``, ``aborted`` or ``in progress``."""
        found = self._rows("xact_status", {"xid": xid}, None)
        return found[0]["status"] if found else None

    def job_get_many(self, job_ids: Sequence[UUID], conn: Conn | None = None) -> list[Job]:
        """The jobs with these ids that exist, live or finished, in the order given."""
        found = {
            r["id"]: rows.job(r) for r in self._rows("job_get_many", {"ids": list(job_ids)}, conn)
        }
        return [found[i] for i in job_ids if i in found]

    def job_dependants(self, job_id: UUID, limit: int, conn: Conn | None = None) -> list[Job]:
        """The jobs whose ``depends_on`` names this one, live or finished, oldest first."""
        found = self._rows("job_dependants", {"id": job_id, "limit": limit}, conn)
        return [rows.job(r) for r in found]

    def job_flow(self, job_id: UUID, limit: int, conn: Conn | None = None) -> list[Job]:
        """The flow this job belongs to: its topmost dependant first, then every job below that
        through ``depends_on``, nearest levels first; at most ``limit`` jobs."""
        root = self._rows("job_flow_root", {"id": job_id}, conn)
        top = root[0]["id"] if root else job_id
        found = self._rows("job_flow", {"id": top, "limit": limit}, conn)
        return [rows.job(r) for r in found]

    def job_publish(
        self, event: str, data: str, options: str, conn: Conn | None = None
    ) -> list[UUID]:
        """Send one job to each queue subscribed to ``event``; their ids, by queue name."""
        params = {"event": event, "data": data, "options": options}
        return [r["job_id"] for r in self._rows("job_publish", params, conn)]

    def subscription_add(self, event: str, queue: str, conn: Conn | None = None) -> bool:
        """Subscribe a queue to an event; False if it already was."""
        found = self._rows("subscription_add", {"event": event, "queue": queue}, conn)
        return bool(found)

    def subscription_remove(self, event: str, queue: str | None, conn: Conn | None = None) -> int:
        """Unsubscribe a queue (None: every queue) from an event; how many subscriptions ended."""
        found = self._rows("subscription_remove", {"event": event, "queue": queue}, conn)
        return len(found)

    def subscription_list(
        self, event: str | None, conn: Conn | None = None
    ) -> list[tuple[str, str]]:
        """(event, queue) pairs, of one event or all."""
        found = self._rows("subscription_list", {"event": event}, conn)
        return [(r["event"], r["queue"]) for r in found]

    def job_list(
        self,
        *,
        queue: str | None,
        states: list[str] | None,
        limit: int,
        offset: int,
        descending: bool,
        since_at: datetime | None = None,
        since_seconds: float | None = None,
        search: str | None = None,
        after: tuple[datetime, UUID] | None = None,
        now: datetime | None = None,
        conn: Conn | None = None,
    ) -> list[Job]:
        """Jobs filtered by queue, states, creation time and a search pattern, newest (or
        oldest) first, after the job ``after`` (created_at, id) of the previous page.

        The history is read from a window by its finished_at index: newest first, from the
        finish time of the ``LIST_FLOOR_PAGES`` pages' worth of newest finished jobs, else from
        windows widened while the page is not full, up to ``LIST_WINDOW`` or, when given,
        ``since``."""
        params = {
            "queue": queue,
            "states": states,
            "limit": limit,
            "offset": offset,
            "descending": descending,
            "since_at": since_at,
            "since_seconds": since_seconds,
            "search": search,
            "after_at": after[0] if after else None,
            "after_id": after[1] if after else None,
            "now": now,
        }
        bounded = since_at is not None or since_seconds is not None
        widest: tuple[float | None, ...] = (None,) if bounded else (LIST_WINDOW,)
        tries: list[tuple[float | None, datetime | None]] = [(w, None) for w in widest]
        if descending:
            tries[:0] = [(w, None) for w in LIST_NARROW_WINDOWS]
            if search is None and (states is None or not FINISHED_STATES.isdisjoint(states)):
                # First a window of a few pages' worth of finished jobs, however long ago.
                skip = LIST_FLOOR_PAGES * (offset + limit) - 1
                reach = {"skip": skip, "window": widest[0], "scan": LIST_FLOOR_SCAN}
                first = self._rows("job_list_floor", {**params, **reach}, conn)
                if first:
                    tries.insert(0, (widest[0], first[0]["finished_at"]))
        for window, floor in tries:
            args = {**params, "window": window, "floor": floor}
            found = self._rows("job_list", args, conn)
            if len(found) == limit and found[-1]["created_at"] >= found[-1]["listed_from"]:
                break
        for row in found:
            del row["listed_from"]
        return [rows.job(r) for r in found]

    def job_cancel(
        self, job_id: UUID, now: datetime | None, conn: Conn | None = None
    ) -> Job | None:
        """Cancel a queued or running job; None if no live job has this id."""
        params = {
            "id": job_id,
            "now": now,
            "cancel_channel": self.cancel_channel,
            "done_channel": self.done_channel,
        }
        found = self._rows("job_cancel", params, conn)
        return rows.job(found[0]) if found else None

    def job_retry(
        self,
        job_id: UUID,
        now: datetime | None,
        dead_only: bool = False,
        conn: Conn | None = None,
    ) -> Job | None:
        """Make a queued, failed or cancelled job (with ``dead_only``: a failed job) runnable
        now; None if it is none of those."""
        params = {"id": job_id, "now": now, "channel": self.channel, "dead_only": dead_only}
        found = self._rows("job_retry", params, conn)
        return rows.job(found[0]) if found else None

    def job_retry_dead_all(self, queue: str, now: datetime | None, conn: Conn | None = None) -> int:
        """Queue every dead letter of ``queue`` again; how many."""
        params = {"queue": queue, "now": now, "channel": self.channel}
        found = self._rows("job_retry_dead_all", params, conn)
        return int(found[0]["count"])

    def job_delete(self, job_id: UUID, conn: Conn | None = None) -> bool:
        """Delete a job that is not running; False if no such job is deletable."""
        params = {"id": job_id, "done_channel": self.done_channel}
        return bool((self._rows("job_delete", params, conn))[0]["count"])

    def job_list_dead(
        self, queue: str | None, limit: int, offset: int, conn: Conn | None = None
    ) -> list[Job]:
        """Failed jobs, newest first."""
        params = {"queue": queue, "limit": limit, "offset": offset}
        return [rows.job(r) for r in self._rows("job_list_dead", params, conn)]

    def job_purge_dead(
        self,
        queue: str | None,
        older_than: float | None,
        now: datetime | None,
        conn: Conn | None = None,
    ) -> int:
        """Delete failed jobs (those finished more than ``older_than`` seconds ago); how many."""
        params = {"queue": queue, "older_than": older_than, "now": now}
        return int((self._rows("job_purge_dead", params, conn))[0]["count"])

    def worker_list(self, conn: Conn | None = None) -> list[WorkerInfo]:
        """Every registered worker, oldest first."""
        return [WorkerInfo(**r) for r in self._rows("worker_list", {}, conn)]

    def queue_live_counts(
        self, now: datetime | None, conn: Conn | None = None
    ) -> list[dict[str, Any]]:
        """Per queue: queued, retrying, running and dead jobs, and the oldest runnable's wait."""
        return self._rows("queue_live_counts", {"now": now}, conn)

    def worker_count_alive(self, stale_after: float, conn: Conn | None = None) -> int:
        """How many workers sent a heartbeat within ``stale_after`` seconds."""
        found = self._rows("worker_count_alive", {"stale_after": stale_after}, conn)
        return int(found[0]["count"])

    def job_wait(self, job_id: UUID, timeout: float) -> Job | None:
        """The job once it is finished, or as it stands when ``timeout`` runs out (None if no
        such job). Woken by the NOTIFY that finishing sends, on the LISTEN connection every
        wait of this store shares; a job kept in no history (retention 0) comes from the
        notification itself, without its ``data``."""
        deadline = time.monotonic() + timeout
        if self._waiter is None:
            while True:
                job = self.job_get(job_id)
                remaining = deadline - time.monotonic()
                if job is None or job.state.is_terminal or remaining <= 0:
                    return job
                time.sleep(min(remaining, WAIT_POLL_INTERVAL))
        with self._waiter.watch(job_id) as woken:
            woken.arm()
            # Listening before registering: an ack that sees the registration notifies a
            # connection that hears it.
            waiter = uuid4()
            params = {"id": waiter, "job": job_id, "ttl": timeout + WAITER_GRACE}
            self._rows("waiter_register", params, None)
            try:
                while True:
                    job = self.job_get(job_id)
                    if woken.outcome is not None:  # retention 0: the row is gone
                        return rows.job_outcome(woken.outcome)
                    remaining = deadline - time.monotonic()
                    if job is None or job.state.is_terminal or remaining <= 0:
                        return job
                    # Read again at least every WAIT_RECHECK: an ack that looked for waiters
                    # just before this one registered, and committed just after its read,
                    # notifies nobody.
                    woken.wait(min(remaining, WAIT_RECHECK))
                    woken.arm()
            finally:
                with suppress(Error, DatabaseUnavailable):
                    self._rows("waiter_remove", {"id": waiter}, None)

    def schedule_upsert(self, values: dict[str, Any], conn: Conn | None = None) -> Schedule:
        """Create or replace a schedule."""
        return rows.schedule((self._rows("schedule_upsert", values, conn))[0])

    def schedule_delete(self, name: str, conn: Conn | None = None) -> bool:
        """Remove a schedule (its tick history goes with it); False if there was none."""
        return bool((self._rows("schedule_delete", {"name": name}, conn))[0]["count"])

    def schedule_get(self, name: str, conn: Conn | None = None) -> Schedule | None:
        """The schedule of this name."""
        found = self._rows("schedule_get", {"name": name}, conn)
        return rows.schedule(found[0]) if found else None

    def worker_troubles(self, stale_after: float) -> list[dict[str, Any]]:
        """Live workers reporting a background service down or handler threads stuck."""
        return self._rows("worker_troubles", {"stale_after": stale_after}, None)

    def schedule_list(self, conn: Conn | None = None) -> list[Schedule]:
        """Every schedule, by name."""
        return [rows.schedule(r) for r in self._rows("schedule_list", {}, conn)]

    def queue_upsert(
        self, name: str, policy: dict[str, Any], create: bool, conn: Conn | None = None
    ) -> Queue | None:
        """Set the given policy fields of a queue; create it if missing and ``create``."""
        params = {"name": name, "policy": rows.json_text(policy), "create": create}
        found = self._rows("queue_upsert", params, conn)
        return rows.queue(found[0]) if found else None

    def queue_get(self, name: str, conn: Conn | None = None) -> Queue | None:
        """The queue of this name."""
        found = self._rows("queue_get", {"name": name}, conn)
        return rows.queue(found[0]) if found else None

    def queue_list(self, conn: Conn | None = None) -> list[Queue]:
        """Every queue, by name."""
        return [rows.queue(r) for r in self._rows("queue_list", {}, conn)]

    def queue_delete(self, name: str, conn: Conn | None = None) -> tuple[int, int]:
        """Delete a queue and its jobs: (queues deleted, jobs deleted)."""
        params = {"name": name}
        with self.connection(conn) as used, used.transaction():
            found = (self._rows("queue_delete", params, used))[0]
            queues, jobs = found["queues"], found["jobs"]
            if queues and (self._rows("history_legacy_exists", {}, used))[0]["present"]:
                jobs += (self._rows("queue_delete_legacy", params, used))[0]["count"]
        return queues, jobs

    def queue_purge(self, name: str, conn: Conn | None = None) -> int:
        """Delete the queued jobs of a queue; how many."""
        found = self._rows("queue_purge", {"name": name}, conn)
        return int(found[0]["count"])

    def queue_pause(self, name: str) -> bool:
        """Pause a queue: no fetch claims its jobs until it is resumed; False if no such queue."""
        params = {"name": name, "cancel_channel": self.cancel_channel}
        return bool((self._rows("queue_pause", params, None))[0]["exists"])

    def queue_resume(self, name: str) -> bool:
        """Resume a queue and wake its workers; False if no such queue."""
        params = {"name": name, "channel": self.channel}
        return bool((self._rows("queue_resume", params, None))[0]["exists"])

    def job_bulk_count(
        self, found: BulkFilter, now: datetime | None
    ) -> tuple[int, datetime | None]:
        """How many jobs ``found`` matches, and the creation cutoff of its ``older_than``
        (fixed here, so every batch of the action uses the same one)."""
        params = {
            **found.params(),
            "live_states": found.live_states,
            "history_states": found.history_states,
            "older_than": found.older_than,
            "now": now,
        }
        row = (self._rows("job_bulk_count", params, None))[0]
        return int(row["matched"]), row["before"]

    def job_bulk_step(
        self,
        name: str,
        found: BulkFilter,
        states: list[str],
        *,
        before: datetime | None,
        after: UUID,
        limit: int,
        priority: int | None,
        now: datetime | None,
    ) -> tuple[int, UUID | None]:
        """One batch of a bulk action (the ``job_bulk_*`` statement ``name``): how many jobs it
        changed, and the last id it looked at (None once none is left after ``after``)."""
        params = {
            **found.params(),
            "states": states,
            "before": before,
            "after": after,
            "limit": limit,
            "priority": priority,
            "now": now,
            "channel": self.channel,
            "cancel_channel": self.cancel_channel,
            "done_channel": self.done_channel,
        }
        row = (self._rows(name, params, None))[0]
        return int(row["affected"]), row["last"]

    def queue_stats(
        self, name: str | None, now: datetime | None, conn: Conn | None = None
    ) -> list[dict[str, Any]]:
        """Rows of (queue, state, n, oldest_waiting_seconds)."""
        params = {"name": name, "now": now, **_COUNTED}
        return self._rows("queue_stats", params, conn)

    def stats_series(
        self, queue: str | None, minutes: int, now: datetime | None, conn: Conn | None = None
    ) -> list[StatsMinute]:
        """The last ``minutes`` minutes of one queue, or of all summed, oldest first."""
        params = {"queue": queue, "minutes": minutes, "now": now, **_COUNTED}
        return reporting.stats_series(
            self._rows("stats_series", params, conn), STATS_WAIT_BOUNDS_MS
        )

    # -- maintenance and diagnosis ---------------------------------------------------------

    def maintain(
        self,
        *,
        dead_retention: float,
        default_retention: float,
        tick_keep: float,
        chunk: int,
        now: datetime | None,
        stop: Flag | None = None,
        pace: Pace | None = None,
        analyze: bool = True,
    ) -> dict[str, int]:
        """One maintenance pass. The history's partitions: created ahead as far as the longest
        retention in use (a queue's, or ``default_retention``), dropped once ended, and the
        parent analyzed if ``analyze`` (the live table and the dead letters too). Then what
        outlived its use is deleted, ``chunk`` rows per statement, until nothing is left (or
        ``stop`` is set); each statement is followed by ``pace`` (given how long it took and
        how many live jobs there are), which lets the hot path have the database. Partitions
        created and dropped, rows moved out of the history before 0012 (legacy_moved), rows
        deleted per kind (dead_letters, throttle, schedule_ticks)."""
        counts = {
            "partitions_created": self.archive_extend(default_retention, now),
            "partitions_dropped": self.archive_drop(now, stop),
        }
        if analyze:
            self.archive_analyze(now)
            self._rows("maintain_analyze_live", {}, None)
        backlog = 0
        if pace is not None:
            backlog = sum(r["live"] for r in self.maintain_dead_tuples() if r["table"] == "job")
        for kind in ("legacy_moved", "dead_letters", "throttle", "schedule_ticks"):
            total = 0
            limit = LEGACY_BATCH if kind == "legacy_moved" else chunk
            while stop is None or not stop.is_set():
                started = time.monotonic()
                if kind == "legacy_moved":
                    deleted = self.history_legacy_move(now, limit)
                elif kind == "dead_letters":
                    deleted = self.maintain_dead(dead_retention, now, chunk)
                elif kind == "throttle":
                    deleted = self.maintain_throttle(now, chunk)
                else:
                    deleted = self.maintain_ticks(tick_keep, now, chunk)
                total += deleted
                if deleted < limit:
                    break
                if pace is not None:
                    pace(time.monotonic() - started, backlog)
            counts[kind] = total
        self.archive_note(now, passed=True)
        return counts

    def history_legacy_move(self, now: datetime | None, limit: int) -> int:
        """Move up to ``limit`` rows of the history table before 0012 to the new tables (the
        table is dropped by the call that finds it empty); how many."""
        params = {"limit": limit, "now": now}
        found = self._rows("history_legacy_move", params, None)
        return int(found[0]["history_legacy_move"])

    def maintain_dead(self, dead_retention: float, now: datetime | None, limit: int) -> int:
        """Delete up to ``limit`` dead letters older than ``dead_retention`` seconds."""
        params = {"dead_retention": dead_retention, "now": now, "limit": limit}
        return int((self._rows("maintain_dead", params, None))[0]["count"])

    def archive_extend(self, default_retention: float, now: datetime | None) -> int:
        """Create the history partitions missing from now to the longest retention in use
        (a queue's, ``default_retention``, or a job's kept beyond the partitions, which then
        moves to the partition that takes it); how many were created."""
        params = {"default_retention": default_retention, "now": now}
        found = self._rows("archive_horizon", params, None)
        params = {"horizon": found[0]["greatest"], "now": now}
        created = int((self._rows("archive_extend", params, None))[0]["archive_extend"])
        # Jobs kept beyond the partitions that reached before now go where they belong.
        self._rows("archive_rehome", {"now": now}, None)
        self.archive_note(now, extended=True)
        return created

    def archive_drop(self, now: datetime | None, stop: Flag | None = None) -> int:
        """Detach and drop the history partitions that ended; how many.

        On a direct connection (``listen_dsn``) each is detached CONCURRENTLY, so writers never
        wait; behind a transaction pooler with no direct DSN, or by a role that does not own the
        table (through the owner's function), with a plain detach bounded by ``lock_timeout``.
        A detach interrupted earlier is finalized first.
        """
        names = [r["name"] for r in self._rows("archive_expired", {"now": now}, None)]
        if not names:
            return 0
        dropped = 0
        if not (self._rows("archive_owned", {}, None))[0]["pg_has_role"]:
            # A least-privilege role: the owner's function drops them, one transaction each.
            for name in names:
                if stop is not None and stop.is_set():
                    break
                params = {"name": name, "now": now}
                found = self._rows("archive_drop_partition", params, None)
                dropped += bool(found[0]["archive_drop_partition"])
            self.archive_note(now, dropped=dropped)
            return dropped
        with self._direct() as (conn, concurrent):
            timeout = {"ms": str(int(ARCHIVE_LOCK_TIMEOUT * 1000))}
            self._rows("archive_lock_timeout", timeout, conn)
            for name in names:
                if stop is not None and stop.is_set():
                    break
                state = self._rows("archive_partition_state", {"name": name}, conn)
                where = state[0]["state"]
                if where == "attached":
                    detach = "archive_detach" if concurrent else "archive_detach_now"
                    self._ddl(detach, name, conn)
                elif where == "pending":
                    self._ddl("archive_finalize", name, conn)
                if where != "gone":
                    self._ddl("archive_drop_hooks", name, conn)
                    self._ddl("archive_drop", name, conn)
                self._rows("archive_forget", {"name": name}, conn)
                dropped += 1
        self.archive_note(now, dropped=dropped)
        return dropped

    def archive_analyze(self, now: datetime | None) -> None:
        """ANALYZE the partitioned history (autovacuum analyzes only its partitions), with a
        small sample (see archive_analyze in maintenance.sql)."""
        with self.connection() as conn:
            self._rows("archive_analyze_sample", {}, conn)
            try:
                self._rows("archive_analyze", {}, conn)
            finally:
                self._rows("archive_analyze_done", {}, conn)
        self.archive_note(now, analyzed=True)

    def archive_note(
        self,
        now: datetime | None,
        *,
        extended: bool = False,
        dropped: int = 0,
        analyzed: bool = False,
        failure: str | None = None,
        passed: bool = False,
    ) -> None:
        """Record what the leader did to the partitions, for ``conveyor doctor``: ``passed``
        once a whole pass succeeded, which clears the last failure."""
        params = {
            "now": now,
            "extended": extended,
            "dropped": dropped,
            "analyzed": analyzed,
            "failure": failure,
            "passed": passed,
        }
        self._rows("archive_note", params, None)

    @contextmanager
    def _direct(self) -> Iterator[tuple[Conn, bool]]:
        """A connection for partition DDL, and whether it may detach CONCURRENTLY: a direct
        one of its own (``listen_dsn``), else a pooled one (behind a transaction pooler)."""
        if self.listen_dsn is None:
            with self.connection() as pooled:
                try:
                    yield pooled, False
                finally:
                    # The lock_timeout set for the DDL must not stay with the pool's connection.
                    self._rows("migration_lock_timeout_reset", {}, pooled)
            return
        try:
            conn = Connection.connect(
                self.listen_dsn,
                **{**self._connect_kwargs, "application_name": f"conveyor ddl {self.schema}"},
            )
        except Error as exc:
            raise unavailable(exc) from None
        try:
            yield conn, True
        finally:
            conn.close()

    def _ddl(self, name: str, partition: str, conn: Conn) -> None:
        """Run a partition statement; the partition's name (ours, from archive_partition) is
        quoted as an identifier."""
        text = sql.SQL(self._queries[name].sql).format(partition=sql.Identifier(partition))
        try:
            conn.execute(text)
        except Error as exc:
            reraise(exc, self.schema)

    def maintain_throttle(self, now: datetime | None, limit: int) -> int:
        """Delete up to ``limit`` closed throttle windows."""
        found = self._rows("maintain_throttle", {"now": now, "limit": limit}, None)
        return int(found[0]["count"])

    def maintain_ticks(self, tick_keep: float, now: datetime | None, limit: int) -> int:
        """Delete up to ``limit`` tick rows no scheduler needs any more."""
        params = {"tick_keep": tick_keep, "now": now, "limit": limit}
        return int((self._rows("maintain_ticks", params, None))[0]["count"])

    def vacuum_churned(self, min_dead: int, dead_share: float) -> list[str]:
        """VACUUM the live table and the dead letters where dead tuples reach ``min_dead`` and
        ``dead_share`` of the live ones, and the live table when it has outgrown what the
        planner believes it holds; the tables vacuumed. (No ANALYZE: see
        ``maintain_vacuum_job``; :meth:`maintain` analyzes them.)

        Outgrown: the statements of a worker run cached generic plans, made at a connection's
        first call from the statistics of that moment. A plan made while the live table was
        empty (as the last VACUUM or ANALYZE saw it) scans the whole table to find the rows
        an acknowledgement names, and keeps doing so as a burst of sends fills it, since
        inserts alone leave no dead tuples to set off a VACUUM. The VACUUM's new row count
        invalidates those plans: each connection plans again, by key."""
        done = []
        for r in self.maintain_dead_tuples():
            outgrown = (
                r["table"] == "job"
                and r["live"] >= VACUUM_OUTGROWN_ROWS
                and r["live"] >= VACUUM_OUTGROWN_FACTOR * r["planned"]
            )
            if outgrown or (r["dead"] >= min_dead and r["dead"] >= dead_share * r["live"]):
                if r["table"] == "job":
                    self.maintain_vacuum_job()
                else:
                    self.maintain_vacuum_job_dead()
                done.append(str(r["table"]))
        return done

    def maintain_dead_tuples(self) -> list[dict[str, Any]]:
        """Live and dead tuples of the live table and the dead letters, and the rows the
        planner believes each holds."""
        return self._rows("maintain_dead_tuples", {}, None)

    def maintain_vacuum_job(self) -> None:
        """VACUUM the live table."""
        self._rows("maintain_vacuum_job", {}, None)

    def maintain_vacuum_job_dead(self) -> None:
        """VACUUM the dead letters."""
        self._rows("maintain_vacuum_job_dead", {}, None)

    def doctor_archive(self) -> dict[str, Any]:
        """The history's partitions: how many, how far ahead they reach, how many ended and
        wait to be dropped, and what the leader last did (see ``archive_status``)."""
        return (self._rows("doctor_archive", {}, None))[0]

    def doctor_invalid_indexes(self) -> list[str]:
        """Indexes of the schema left invalid by a failed concurrent build."""
        return [r["index"] for r in self._rows("doctor_invalid_indexes", {}, None)]

    def doctor_tables(self) -> list[dict[str, Any]]:
        """Live and dead tuples and sizes of each table of the schema."""
        return self._rows("doctor_tables", {}, None)

    def doctor_indexes(self) -> list[dict[str, Any]]:
        """Size, table rows and key width of each index of the schema."""
        return self._rows("doctor_indexes", {}, None)

    def doctor_autovacuum(self) -> list[dict[str, Any]]:
        """Whether autovacuum runs on the server and on each table of the schema."""
        return self._rows("doctor_autovacuum", {}, None)

    def doctor_old_transactions(self) -> list[dict[str, Any]]:
        """The oldest open transactions of the database (this session's excluded)."""
        return self._rows("doctor_old_transactions", {}, None)

    def doctor_orphaned_jobs(self, stale_after: float) -> list[dict[str, Any]]:
        """Active jobs whose worker is gone or silent for ``stale_after`` seconds."""
        return self._rows("doctor_orphaned_jobs", {"stale_after": stale_after}, None)

    def doctor_stuck_waiting(self) -> list[dict[str, Any]]:
        """Waiting jobs that nothing will release."""
        return self._rows("doctor_stuck_waiting", {}, None)

    def doctor_stale_workers(self, stale_after: float) -> list[dict[str, Any]]:
        """Workers silent for ``stale_after`` seconds."""
        return self._rows("doctor_stale_workers", {"stale_after": stale_after}, None)

    def notify_round_trip(self, timeout: float) -> float | None:
        """Seconds a NOTIFY on a private channel took to reach a LISTEN on the connection the
        workers listen on (``listen_dsn``); None if it did not arrive within ``timeout`` or
        this store does not listen (it polls)."""
        if self.listen_dsn is None:
            return None
        # Random, not scoped by schema: a schema-long name could pass the 63-byte limit.
        channel = f"conveyor_doctor_{uuid4().hex}"
        try:
            with Connection.connect(self.listen_dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                start = time.monotonic()
                self._rows("doctor_notify", {"channel": channel, "payload": "ping"}, None)
                for note in conn.notifies(timeout=timeout):
                    if note.channel == channel:
                        return time.monotonic() - start
        except Error as exc:
            reraise(exc, self.schema)
        return None


class Pace(Protocol):
    """Called after each cleanup statement with the seconds it took and the live jobs' count;
    returns (or its awaitable does) once the hot path had its share of the database."""

    def __call__(self, took: float, backlog: int) -> Any:
        """Pause."""
        ...


class Flag(Protocol):
    """Anything with ``is_set()``, such as an asyncio or a threading Event."""

    def is_set(self) -> bool:
        """True once set."""
        ...
