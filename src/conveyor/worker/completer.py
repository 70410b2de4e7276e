"""Batched acknowledgements: outcomes and progress go to the database a batch per statement.

An ack waits at most ``flush_interval`` seconds, or until ``batch_size`` acks are pending. If the
database is unreachable, pending acks stay queued in memory and are retried; if the process dies
first, recovery runs those jobs again (at-least-once).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from conveyor._store.worker_store import Ack, Changed, WorkerStore
from conveyor.errors import DatabaseUnavailable, ValidationError
from conveyor.worker.waiting import first_of

log = logging.getLogger("conveyor.worker")

# The most outcomes one statement writes. Acks pile up while the database is slow or away, and
# a flush then writes them all: in statements of this many, each a bounded transaction.
ACKS_PER_STATEMENT = 1000


class Completer:
    """Collects acks and progress and writes them in batches."""

    def __init__(
        self,
        store: WorkerStore,
        worker_id: UUID,
        clock: Callable[[], datetime | None],
        on_changed: Callable[[Ack, Changed | None], None],
        on_error: Callable[[BaseException], None],
        *,
        flush_interval: float = 0.005,
        batch_size: int = 200,
    ) -> None:
        self._store = store
        self._worker_id = worker_id
        self._clock = clock
        self._on_changed = on_changed
        self._on_error = on_error
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._acks: list[Ack] = []
        self._writing: list[Ack] = []  # the batch a statement under way writes
        # Attempts whose outcome no statement could write: they stay active until recovery
        # takes them back, and must not be taken for claims the worker lost track of.
        self._abandoned: set[tuple[UUID, int]] = set()
        self._progress: dict[tuple[UUID, int], dict[str, Any]] = {}
        self._pending = asyncio.Event()
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()

    def add(self, ack: Ack) -> None:
        """Queue one outcome for the next batch."""
        self._acks.append(ack)
        self._pending.set()
        if len(self._acks) >= self._batch_size:
            self._full.set()

    def progress(self, job_id: UUID, attempt: int, value: dict[str, Any]) -> None:
        """Queue the latest progress of a running attempt (older values are dropped)."""
        self._progress[(job_id, attempt)] = value
        self._pending.set()

    def unwritten(self) -> list[tuple[UUID, int]]:
        """The attempts (job, attempt) whose outcome is queued, being written, or could not be
        written: still active in the database, though no longer running."""
        return [
            *((a.job_id, a.attempt) for a in self._acks),
            *((a.job_id, a.attempt) for a in self._writing),
            *self._abandoned,
        ]

    async def run(self, stop: asyncio.Event) -> None:
        """Flush batches until ``stop`` is set; the caller flushes what remains with drain()."""
        failures = 0
        while not stop.is_set():
            await first_of(self._pending.wait(), stop.wait())
            if not self._full.is_set():
                await first_of(self._full.wait(), asyncio.sleep(self._flush_interval))
            try:
                await self.flush()
                failures = 0
            except DatabaseUnavailable as exc:
                failures += 1
                self._on_error(exc)
                await first_of(stop.wait(), asyncio.sleep(min(5.0, 0.05 * 2**failures)))

    async def flush(self) -> None:
        """Write everything queued now; on failure, it stays queued. Flushes never overlap, so
        once a flush returns, every ack queued before it was called is written."""
        async with self._lock:
            await self._flush_locked()

    async def fetch(self, queues: Sequence[str], limit: int) -> list[tuple[Any, ...]]:
        """Claim up to ``limit`` jobs. The outcomes pending now are written in the same
        transaction and round trip, so a busy worker commits once per batch instead of twice."""
        if self._lock.locked() or self._progress or not self._acks:
            # A flush under way is not waited for (the claim would wait for its round trip),
            # and progress, which must precede the outcomes, is left to the completer's own loop.
            return await self._store.job_fetch(queues, self._worker_id, limit, self._clock())
        async with self._lock:
            self._pending.clear()
            self._full.clear()
            acks, self._acks = self._acks[:ACKS_PER_STATEMENT], self._acks[ACKS_PER_STATEMENT:]
            if self._acks:  # more than one statement's worth: the rest for the completer's loop
                self._pending.set()
            try:
                self._writing = acks
                changed, claimed = await self._store.job_ack_fetch(
                    self._worker_id, acks, queues, limit, self._clock()
                )
            except ValidationError:
                # An outcome the database refuses: the batch is written the slow way, which
                # isolates it, and the claim goes alone.
                self._acks[:0] = acks
                await self._flush_locked()
                return await self._store.job_fetch(queues, self._worker_id, limit, self._clock())
            except BaseException:
                self._acks[:0] = acks
                self._pending.set()
                raise
            finally:
                self._writing = []
            by_id = {c.id: c for c in changed}
            for ack in acks:
                self._on_changed(ack, by_id.get(ack.job_id))
            return claimed

    async def _flush_locked(self) -> None:
        self._pending.clear()
        self._full.clear()
        progress, self._progress = self._progress, {}
        acks, self._acks = self._acks, []
        # Until written, the acks stay in _writing: unwritten() must count them.
        self._writing = acks
        try:
            if progress:
                # Progress first: an ack in the same batch would finish the job before it.
                await self._write_progress(progress)
            while self._writing:
                batch = self._writing[:ACKS_PER_STATEMENT]
                for ack, changed in await self._write_acks(batch):
                    self._on_changed(ack, changed)
                self._writing = self._writing[len(batch) :]
        except BaseException:
            self._acks[:0] = self._writing
            for key, value in progress.items():
                self._progress.setdefault(key, value)
            self._pending.set()
            raise
        finally:
            self._writing = []

    async def _write_progress(self, progress: dict[tuple[UUID, int], dict[str, Any]]) -> None:
        try:
            await self._store.job_progress_many(self._worker_id, progress)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            # Progress is advisory: a value the database refuses is dropped, never allowed to
            # hold back the outcomes behind it.
            log.warning("progress of %d attempt(s) refused and dropped: %s", len(progress), exc)

    async def _write_acks(self, acks: list[Ack]) -> list[tuple[Ack, Changed | None]]:
        """Write a batch; each ack as written, with the change it made (None: refused by its
        guard). If the database refuses the batch for a reason other than the connection, the
        rows it cannot take are found by halves, so one bad row never blocks the others."""
        try:
            changed = await self._store.job_ack_many(self._worker_id, acks, self._clock())
            by_id = {c.id: c for c in changed}
            return [(ack, by_id.get(ack.job_id)) for ack in acks]
        except ValidationError as exc:
            # Only values the database refuses are isolated; a deadlock or a cancelled
            # statement comes as DatabaseUnavailable, and the whole batch is written again.
            if len(acks) > 1:
                half = len(acks) // 2
                return await self._write_acks(acks[:half]) + await self._write_acks(acks[half:])
            return await self._refused(acks[0], exc)

    async def _refused(self, ack: Ack, exc: Exception) -> list[tuple[Ack, Changed | None]]:
        """An outcome the database cannot store: the attempt fails with the reason instead (the
        job retries or goes to the dead letters as its policy says). If even that is refused,
        the job stays active and recovery takes it back after its deadline."""
        log.error("outcome %s of job %s attempt %d refused by the database: %s",
                  ack.outcome, ack.job_id, ack.attempt, exc)  # fmt: skip
        if ack.outcome in ("failed", "release") and ack.error is None:
            return [(ack, None)]
        error = {
            "attempt": ack.attempt,
            "type": "OutcomeRefused",
            "message": f"the database refused this attempt's outcome ({ack.outcome}): {exc}"[:4000],
            "traceback": None,
            "worker": str(self._worker_id),
        }
        outcome = "failed" if ack.outcome in ("completed", "failed") else "retry"
        instead = Ack(ack.job_id, ack.attempt, outcome, error=json.dumps(error), delay=0.0)
        try:
            changed = await self._store.job_ack_many(self._worker_id, [instead], self._clock())
            return [(instead, changed[0] if changed else None)]
        except ValidationError as again:
            log.error("job %s attempt %d: no outcome could be written (%s); recovery will take "
                      "it back after its expire_in", ack.job_id, ack.attempt, again)  # fmt: skip
            self._abandoned.add((ack.job_id, ack.attempt))
            return [(ack, None)]

    async def drain(self, attempts: int = 5) -> None:
        """Write everything queued, retrying a few times if the database is unreachable."""
        for attempt in range(attempts):
            try:
                await self.flush()  # also waits for a flush already under way
                if not self._acks and not self._progress:
                    return
            except DatabaseUnavailable as exc:
                self._on_error(exc)
                await asyncio.sleep(0.2 * 2**attempt)
        if self._acks:
            log.error(
                "could not write %d outcomes before stopping; recovery will run those jobs again",
                len(self._acks),
            )
