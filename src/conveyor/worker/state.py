"""What a worker's producer, slot loops and heartbeat share: the options, the claimed jobs
waiting in the local buffer, the attempts running, and the events by which each tells the
others that something changed.

Keeping it in one object lets each part live in a module of its own (producer.py, executor.py,
heartbeat.py) without reaching into another's attributes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conveyor._store import rows
from conveyor._store.worker_store import WorkerStore
from conveyor.events import Events
from conveyor.worker.completer import Completer
from conveyor.worker.threads import DaemonThreadPool

if TYPE_CHECKING:
    from conveyor.worker.executor import Running

# Adaptive prefetch claims only what the slots should get through within this many seconds, going
# by the recent average attempt time: a crash strands little, and long jobs stay available to
# other workers until a slot is free.
PREFETCH_WINDOW = 0.1
# Room for two fetches of 200: the next is claimed while the last one's jobs run (see
# fetch_wanted). At 200, one fetch filled the room and the next waited for the buffer to empty.
MAX_PREFETCH = 400


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker runs; see :meth:`conveyor.Conveyor.run_worker` for each field."""

    queues: tuple[str, ...]
    concurrency: int = 10
    prefetch: int | None = None  # None: adapt to how long jobs take, up to MAX_PREFETCH
    shutdown_timeout: float = 30.0
    poll_interval: float = 2.0
    heartbeat_interval: float = 5.0
    stale_after: float = 30.0
    burst: bool = False
    max_payload_bytes: int = 1024 * 1024
    flush_interval: float = 0.005


@dataclass(eq=False)
class WorkerState:
    """The state the parts of one worker share; see the module's docstring."""

    id: uuid.UUID
    options: WorkerOptions
    store: WorkerStore
    completer: Completer
    threads: DaemonThreadPool
    events: Events
    clock: Callable[[], datetime | None]
    on_error: Callable[[BaseException], None]  # an error of the worker's own: logged, reported
    # Claimed rows not started yet, in the order they start. Mutated in place only: the slot
    # loops hold this deque.
    buffer: collections.deque[tuple[Any, ...]] = field(default_factory=collections.deque)
    # Keyed by attempt, not by job: a claim of the same job by this worker after recovery
    # wrongly presumed it dead must never overwrite (or be stopped for) the older attempt.
    running: dict[tuple[uuid.UUID, int], Running] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    hard_stop: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # the producer: fetch now
    slot_freed: asyncio.Event = field(default_factory=asyncio.Event)  # the producer: room again
    rows_ready: asyncio.Event = field(default_factory=asyncio.Event)  # idle slots: rows to run
    verify_claims: asyncio.Event = field(default_factory=asyncio.Event)  # the heartbeat: now
    # When the last heartbeat that went through was sent. A worker frozen (SIGSTOP, a paused
    # VM) or cut off past stale_after is presumed dead and its claims handed to others, so
    # claims it buffered are started only while its liveness is recent.
    alive_at: float = field(default_factory=time.monotonic)
    # Counts the times this worker learnt it had been presumed dead: a claim whose fetch was
    # under way meanwhile may have been recovered before it arrived, so it is checked.
    presumed_dead: int = 0
    avg_duration: float | None = None  # of recent attempts, seconds
    # The producer fetches again once this much room is free (see fetch_wanted).
    refill_at: int = 1
    # Set while the producer waits for that room: a slot running handlers that never suspend
    # gives the loop a turn as soon as there is, so the next fetch goes while the buffer still
    # holds work, instead of after YIELD_EVERY jobs of every slot.
    awaiting_room: bool = False
    # Claims under way (fetch sent, rows not yet in the buffer), and how many were ever begun:
    # the heartbeat looks for claims it lost track of only while none is under way, and
    # trusts what it found only if none began meanwhile (see Heartbeat.release_orphans).
    claims_under_way: int = 0
    claims_begun: int = 0

    def slots(self) -> int:
        """Slots that can run a job now: each thread stuck past the pool's replacements holds
        one (see :mod:`conveyor.worker.threads`)."""
        return max(0, self.options.concurrency - self.threads.over_stuck_limit)

    def capacity(self) -> int:
        """Slots plus how many jobs may wait claimed in the local buffer."""
        concurrency = self.slots()
        if self.options.prefetch is not None:
            return concurrency + self.options.prefetch
        if self.avg_duration is None:
            return concurrency
        ahead = int(concurrency * PREFETCH_WINDOW / max(self.avg_duration, 1e-5))
        return concurrency + min(MAX_PREFETCH, ahead)

    def room(self) -> int:
        """How many more jobs the worker may claim now."""
        return self.capacity() - len(self.running) - len(self.buffer)

    def claims_fresh(self) -> bool:
        """Whether this worker's liveness is recent enough to start what it claimed."""
        return time.monotonic() - self.alive_at <= self.options.stale_after / 2

    def fetch_wanted(self) -> bool:
        """Whether the producer should claim now: there is room, and either ``refill_at`` of
        it (after a full fetch, half the room: the next batch is claimed while the other half
        of the last one still runs, so the database and this process work at once), or the
        buffer holds less than a job per slot (no slot waits for a batch to fill)."""
        room = self.room()
        return room > 0 and (room >= self.refill_at or len(self.buffer) < self.slots())

    def start_buffered(self) -> None:
        """Let idle slots take claimed jobs from the local buffer."""
        if self.buffer and not self.claims_fresh():
            self.verify_claims.set()  # the heartbeat first finds out which are still held
            return
        if self.buffer:
            self.rows_ready.set()

    @contextlib.contextmanager
    def claiming(self) -> Iterator[None]:
        """Mark a claim under way, from before its fetch is sent until its rows are in the
        buffer (or handed back, or the fetch failed)."""
        self.claims_under_way += 1
        self.claims_begun += 1
        try:
            yield
        finally:
            self.claims_under_way -= 1

    def unstarted(self) -> list[tuple[uuid.UUID, int]]:
        """The claims waiting in the buffer, as (job, attempt)."""
        return [(row[rows.FETCHED_ID], row[rows.FETCHED_ATTEMPT]) for row in self.buffer]
