"""The worker's queries: fetch, acknowledge, progress, heartbeats, the leader lease, recovery.

Async only, like the worker itself; it shares the named-query machinery of :class:`AsyncStore`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn
from uuid import UUID

from psycopg import Error
from psycopg.rows import tuple_row

from conveyor._store import rows
from conveyor._store.connections import one_line
from conveyor._store.errors import reraise
from conveyor._store.listen import Listener
from conveyor._store.store_async import AsyncStore
from conveyor.config import STATS_WAIT_BOUNDS_MS
from conveyor.errors import (
    DatabaseUnavailable,
    DuplicateJob,
    InvalidOption,
    JobNotFound,
    ValidationError,
)

# How many columns job_fetch returns (the type job_fetched); job_ack_fetch adds more after them.
FETCHED_WIDTH = rows.FETCHED_WIDTH

# SQLSTATE classes of errors about the values themselves (data exception, integrity constraint
# violation): writing the same rows again cannot succeed.
REFUSED_VALUES = ("22", "23")


@dataclass(frozen=True, slots=True)
class Ack:
    """The outcome of one attempt, to be written in the next batch.

    ``outcome`` is one of completed, failed, retry, snooze, release; ``result`` and ``error`` are
    JSON text; ``delay`` is seconds before the job may run again (retry, snooze).
    """

    job_id: UUID
    attempt: int
    outcome: str
    result: str | None = None
    error: str | None = None
    delay: float | None = None


@dataclass(frozen=True, slots=True)
class Changed:
    """A job whose state an acknowledgement or a recovery changed."""

    id: UUID
    queue: str
    state: str


class WorkerStore(AsyncStore):
    """Named queries of the worker, on a pool sized for one worker process."""

    async def keep_open(self, connections: int) -> None:
        """Keep at least ``connections`` connections open from now on (opened in the
        background), so a statement that needs one more than the fetch and the acks take (an
        express fetch) does not wait for a new connection (tens of ms)."""
        pool = self._pool
        if pool.min_size < connections:
            await pool.resize(connections, max(connections, pool.max_size))

    async def mark_idle(self, listener: Listener, queues: Sequence[str]) -> dict[str, str]:
        """Take the idle marks of ``queues`` on the worker's LISTEN connection (see
        worker_mark_idle): for each queue, 'marked', 'sending' or 'taken'."""
        return dict(await self._on_listener(listener, "worker_mark_idle", queues))

    async def unmark_idle(self, listener: Listener, queues: Sequence[str]) -> None:
        """Give up the idle marks of ``queues``, and tell the other workers of those queues."""
        await self._on_listener(listener, "worker_unmark_idle", queues)

    async def _on_listener(
        self, listener: Listener, name: str, queues: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        params = {"channel": self.channel, "queues": list(queues)}
        try:
            return await listener.execute(self._queries[name].sql, params)
        except Error as exc:
            reraise(exc, self.schema)

    async def job_fetch(
        self, queues: Sequence[str], worker: UUID, limit: int, now: datetime | None
    ) -> list[tuple[Any, ...]]:
        """Claim up to ``limit`` runnable jobs: each comes back active, its attempt counted, as
        a tuple for :func:`conveyor._store.rows.fetched_job` (which binds it to its attempt)."""
        params = {"queues": list(queues), "worker": worker, "limit": limit, "now": now}
        return await self._fetch("job_fetch", params, None, tuple_row)

    async def job_next_due(self, queues: Sequence[str], now: datetime | None) -> float | None:
        """Seconds until the next job of ``queues`` falls due after ``now``, None if none waits;
        measured by the database's clock, so the worker's own clock cannot skew it."""
        params = {"queues": list(queues), "now": now}
        found = await self._fetch("job_next_due", params, None, tuple_row)
        return None if not found or found[0][0] is None else float(found[0][0])

    async def job_ack_many(
        self, worker: UUID, acks: Sequence[Ack], now: datetime | None
    ) -> list[Changed]:
        """Write outcomes, guarded by worker and attempt; return the jobs that changed.

        Raises :class:`~conveyor.errors.ValidationError` only when a row's values are refused
        (a data or constraint error: the batch will never go through as it is), and
        :class:`~conveyor.errors.DatabaseUnavailable` for anything else the database raises
        (a deadlock, a cancelled statement, a lock timeout, a lost connection): the same batch
        may be written again.
        """
        params = _ack_params(worker, acks, now)
        try:
            found = await self._fetch("job_ack_many", params, None, tuple_row)
        except Exception as exc:
            _raise_outcome_error(exc)
        return [Changed(*r) for r in found]

    async def job_ack_fetch(
        self,
        worker: UUID,
        acks: Sequence[Ack],
        queues: Sequence[str],
        limit: int,
        now: datetime | None,
    ) -> tuple[list[Changed], list[tuple[Any, ...]]]:
        """Write outcomes and claim up to ``limit`` jobs in one transaction, sent in one round
        trip: one commit where :meth:`job_ack_many` and :meth:`job_fetch` take two. Raises as
        :meth:`job_ack_many` does; on any error neither the outcomes nor the claims are written.
        """
        params = _ack_params(worker, acks, now)
        params.update(queues=list(queues), claimer=worker, limit=limit)
        try:
            found = await self._fetch("job_ack_fetch", params, None, tuple_row)
        except Exception as exc:
            _raise_outcome_error(exc)
        first = found[0]
        ids, queues_, states = first[FETCHED_WIDTH + 1 :]
        changed = [Changed(*c) for c in zip(ids or (), queues_ or (), states or (), strict=True)]
        if first[0] is None:
            return changed, []
        # Each row keeps the trailing columns: rows.fetched_job reads the first FETCHED_WIDTH
        # (copying every tuple to trim it cost more than the rest of this method).
        return changed, found

    async def job_progress_many(
        self, worker: UUID, progress: dict[tuple[UUID, int], dict[str, Any]]
    ) -> None:
        """Store the latest progress of running attempts."""
        keys = list(progress)
        params = {
            "id": [k[0] for k in keys],
            "attempt": [k[1] for k in keys],
            "progress": [json.dumps(progress[k]) for k in keys],
            "worker": worker,
        }
        await self._rows("job_progress_many", params, None)

    async def job_held(self, worker: UUID, attempts: Sequence[tuple[UUID, int]]) -> set[UUID]:
        """The ids among ``attempts`` (id, attempt) that this worker still holds."""
        params = {
            "id": [a[0] for a in attempts],
            "attempt": [a[1] for a in attempts],
            "worker": worker,
        }
        return {r["id"] for r in await self._rows("job_held", params, None)}

    async def job_orphaned(
        self, worker: UUID, known: Sequence[tuple[UUID, int]]
    ) -> list[tuple[UUID, int]]:
        """The attempts (id, attempt) this worker holds in the database other than ``known``."""
        params = {
            "id": [a[0] for a in known],
            "attempt": [a[1] for a in known],
            "worker": worker,
        }
        return [(r["id"], r["attempt"]) for r in await self._rows("job_orphaned", params, None)]

    async def schedule_fire(self, name: str, ticks: Sequence[datetime]) -> list[UUID]:
        """Fire ticks of a schedule; the jobs of the ticks this call won."""
        found = await self._rows("schedule_fire", {"name": name, "ticks": list(ticks)}, None)
        return [r["job_id"] for r in found]

    async def worker_register(
        self, worker: UUID, hostname: str, pid: int, queues: Sequence[str], concurrency: int
    ) -> None:
        """Create (or refresh) this worker's heartbeat row."""
        params = {
            "id": worker,
            "hostname": hostname,
            "pid": pid,
            "queues": list(queues),
            "concurrency": concurrency,
            "metadata": "{}",
        }
        await self._rows("worker_register", params, None)

    async def worker_heartbeat(self, worker: UUID, health: dict[str, Any]) -> bool:
        """Refresh the heartbeat and what the worker reports of itself (``health``: services
        down, stuck threads); False if the row was removed as stale."""
        params = {"id": worker, "health": json.dumps(health)}
        return bool((await self._rows("worker_heartbeat", params, None))[0]["exists"])

    async def worker_deregister(self, worker: UUID) -> None:
        """Remove this worker's row (clean shutdown)."""
        await self._rows("worker_deregister", {"id": worker}, None)

    async def leader_acquire(self, role: str, holder: UUID, ttl: float, stale_after: float) -> bool:
        """Take or renew the lease of ``role`` for ``ttl`` seconds; True if held. A lease whose
        holder's heartbeat is older than ``stale_after`` seconds is taken over."""
        params = {"role": role, "holder": holder, "ttl": ttl, "stale_after": stale_after}
        return bool((await self._rows("leader_acquire", params, None))[0]["exists"])

    async def leader_release(self, role: str, holder: UUID) -> None:
        """Give the lease of ``role`` up, if this holder has it."""
        await self._rows("leader_release", {"role": role, "holder": holder}, None)

    async def job_recover(
        self, stale_after: float, grace: float, now: datetime | None
    ) -> list[Changed]:
        """Fail the attempts of dead workers and of jobs far past ``expire_in``."""
        params = {
            "stale_after": stale_after,
            "grace": grace,
            "now": now,
            "cancel_channel": self.cancel_channel,
        }
        found = await self._rows("job_recover", params, None)
        return [Changed(r["id"], r["queue"], r["state"]) for r in found]

    async def stats_rollup(
        self, now: datetime | None, lag: float, hold: float, chunk: int
    ) -> tuple[int, datetime]:
        """Add up to ``chunk`` history rows finished since the watermark to the counters: none
        of the last ``lag`` seconds, none an open transaction may still write unless it has
        been open for ``hold`` seconds; (jobs counted, the new watermark)."""
        params = {
            "now": now,
            "lag": lag,
            "hold": hold,
            "chunk": chunk,
            "bounds": list(STATS_WAIT_BOUNDS_MS),
        }
        found = (await self._rows("stats_rollup", params, None))[0]
        return int(found["counted"]), found["rolled_to"]

    async def stats_sample_backlog(self, now: datetime | None) -> None:
        """Record each queue's runnable jobs as the backlog of the current minute."""
        await self._rows("stats_sample_backlog", {"now": now}, None)

    async def stats_prune(self, keep: float, now: datetime | None) -> int:
        """Delete per-minute counters older than ``keep`` seconds, and analyze the queue
        table; how many rows were deleted."""
        found = await self._rows("stats_prune", {"keep": keep, "now": now}, None)
        await self._rows("stats_analyze_queues", {}, None)
        return int(found[0]["count"])


def _ack_params(worker: UUID, acks: Sequence[Ack], now: datetime | None) -> dict[str, Any]:
    """The parameters of ``job_ack_many``: one array per field, one element per ack."""
    return {
        "id": [a.job_id for a in acks],
        "worker": [worker] * len(acks),
        "attempt": [a.attempt for a in acks],
        "outcome": [a.outcome for a in acks],
        "result": [a.result for a in acks],
        "error": [a.error for a in acks],
        "delay": [a.delay for a in acks],
        "now": now,
    }


def _raise_outcome_error(exc: Exception) -> NoReturn:
    """Raise what a failed write of outcomes means: InvalidOption for values the database
    refuses (writing them again cannot succeed), DatabaseUnavailable for anything else the
    database raised; any other error as it is."""
    if isinstance(exc, ValidationError | DuplicateJob | JobNotFound):  # translated 22xxx / 23xxx
        raise InvalidOption(f"outcome refused: {one_line(str(exc))}") from exc
    if isinstance(exc, Error):
        if (exc.sqlstate or "")[:2] in REFUSED_VALUES:
            raise InvalidOption(f"outcome refused: {one_line(str(exc))}") from exc
        raise DatabaseUnavailable(f"outcomes not written: {one_line(str(exc))}") from exc
    raise exc
