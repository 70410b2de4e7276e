"""The worker process's main loop: fetch jobs into free slots, run them, hand outcomes to the
completer, keep the heartbeat, listen for wake-ups and cancellations, and shut down gracefully.

Slots: ``concurrency`` attempts run at once (asyncio tasks; sync handlers in a thread pool of the
same size). A fetch never claims more jobs than free slots. When a fetch comes back full, more jobs
are probably waiting, so the next fetch happens as soon as enough slots free up; otherwise the
worker sleeps until a NOTIFY for one of its queues, or the jittered poll interval.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from conveyor import telemetry
from conveyor._store import rows
from conveyor._store.listen import Listener
from conveyor._store.worker_store import Ack, Changed, WorkerStore
from conveyor.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidRetryDelay,
    PayloadError,
    Retry,
)
from conveyor.events import Event, Events
from conveyor.handlers import Handler, Registry
from conveyor.models import Job
from conveyor.worker import outcome
from conveyor.worker.completer import Completer
from conveyor.worker.runtime import Runtime
from conveyor.worker.service import Service, ServiceContext
from conveyor.worker.supervisor import Supervisor
from conveyor.worker.threads import DaemonThreadPool, LoopHandoff
from conveyor.worker.transaction import Transactions
from conveyor.worker.waiting import first_of

log = logging.getLogger("conveyor.worker")

# Adaptive prefetch claims only what the slots should get through within this many seconds, going
# by the recent average attempt time: a crash strands little, and long jobs stay available to
# other workers until a slot is free.
PREFETCH_WINDOW = 0.1
MAX_PREFETCH = 200
# A slot whose handlers finish without suspending gives the event loop a turn this often.
YIELD_EVERY = 16
# At most one look-up of the next due time per this many seconds. Under a steady load nearly
# every fetch comes back short (the worker keeps up), and asking after each one doubled the
# worker's statements; a look-up skipped is made this much later, by a timer.
NEXT_DUE_SPACING = 0.025
# pause_queue's notification on the cancel channel (whose other payloads are job ids).
PAUSED_PREFIX = "paused:"
# A send to a fair queue heard while the producer is busy (a fetch under way, or waiting for
# room) claims at most this many jobs of that queue at once, beside it (an express fetch; see
# Worker._express): at full drain the producer's next fetch may be tens of ms away, and the turn
# of the key just sent should not wait for it.
EXPRESS_LIMIT = 10


def admit_claimed(buffer: collections.deque[tuple[Any, ...]], claimed: list[Any]) -> None:
    """Add claimed rows to the local buffer, in claim order, except that the first row of each
    fair key (queue and ``fair_key``) the buffer holds no job of goes to its front: the claim
    gave that key its turn, and behind the buffer it would wait for the jobs another key's
    earlier fetches put there (up to ``PREFETCH_WINDOW`` of work)."""
    if not buffer or all(row[rows.FETCHED_META] is None for row in claimed):
        buffer.extend(claimed)
        return
    held = {(row[rows.FETCHED_QUEUE], _fair_key(row)) for row in buffer}
    first: list[Any] = []
    for row in claimed:
        key = (row[rows.FETCHED_QUEUE], _fair_key(row))
        if key[1] is not None and key not in held:
            held.add(key)
            first.append(row)
        else:
            buffer.append(row)
    buffer.extendleft(reversed(first))


def _fair_key(row: tuple[Any, ...]) -> str | None:
    meta = row[rows.FETCHED_META]  # a fair queue's claim carries the key there (0015)
    return None if meta is None else meta.get("fair_key")


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


@dataclass(eq=False, slots=True)
class Running:
    """One attempt in flight, on the slot loop (a task) that runs it."""

    job: Job
    runtime: Runtime
    slot: asyncio.Task[None]
    started: float
    deadline: float
    stop_reason: str | None = None  # "cancelled", "expired", "shutdown", "settling"
    future: concurrent.futures.Future[Any] | None = None  # a sync handler's call
    # When the handler was called (wall clock, seconds since the epoch), for the error of a
    # failed attempt: a float, since a datetime per job cost more than the rest of Running.
    started_wall: float = field(default_factory=time.time)


class Worker:
    """Runs the jobs of some queues until stopped (or, in burst mode, until none is due)."""

    def __init__(
        self,
        *,
        dsn: str,
        schema: str,
        registry: Registry,
        listen_dsn: str | None = "",
        pgbouncer: bool = False,
        events: Events,
        services: Sequence[Service],
        options: WorkerOptions,
        clock: Callable[[], datetime | None],
        rng: Callable[[], float] = random.random,
        tracer_provider: Any = None,
    ) -> None:
        missing = [q for q in options.queues if registry.get(q) is None]
        if missing:
            raise ConfigurationError(f"no handler registered for queue(s): {', '.join(missing)}")
        if not options.queues:
            raise ConfigurationError("the worker has no queue to serve: register a handler first")
        self.id = uuid.uuid4()
        self.options = options
        self._schema = schema
        self._registry = registry
        self._events = events
        self._services = list(services)
        self._clock = clock
        self._rng = rng
        self._tracer_provider = tracer_provider  # OpenTelemetry's; None: the global one
        self._store = WorkerStore(
            dsn,
            schema,
            min_size=1,
            max_size=4,
            application_name=f"conveyor-worker {schema}",
            listen_dsn=listen_dsn,
            prepare=not pgbouncer,
            utc=True,
        )
        # Keyed by attempt, not by job: a claim of the same job by this worker after recovery
        # wrongly presumed it dead must never overwrite (or be stopped for) the older attempt.
        self._running: dict[tuple[uuid.UUID, int], Running] = {}
        self._buffer: collections.deque[tuple[Any, ...]] = collections.deque()  # claimed rows
        self._paused_at: dict[str, float] = {}  # queue: when its pause was heard
        # The fair queues among this worker's (read at start, learnt from claims since), whether
        # the producer waits for a wake-up (a NOTIFY makes it fetch at once), and the express
        # fetch beside it when it does not (see _express).
        self._fair_queues: set[str] = set()
        self._idle = False
        self._express_task: asyncio.Task[None] | None = None
        self._express_again: set[str] = set()
        self._express_asked_at: float | None = None  # when the one under way was sent
        self._keeping_open: asyncio.Task[None] | None = None
        self._avg_duration: float | None = None
        # A rate-limited queue gains a token every interval / limit seconds and no NOTIFY says
        # so: the worker looks again that often (the tightest of its queues), not at the poll.
        self._token_interval = float("inf")
        self._refill_at = 1
        # Acked jobs until written, kept only to hand them to outcome listeners, and only for
        # the outcomes someone listens to (a quiet success costs nothing here).
        self._pending: dict[tuple[uuid.UUID, int], tuple[Job, float]] = {}
        self._outcomes_heard = frozenset(
            outcome
            for outcome, names in _ACKED_EVENTS.items()
            if any(events.wanted(name) for name in names)
        )
        self._threads = DaemonThreadPool(options.concurrency, "conveyor-job")
        self._handoff = LoopHandoff(asyncio.get_running_loop())
        self._transactions = Transactions(
            dsn, schema, self.id, size=options.concurrency, prepare=not pgbouncer, clock=clock,
            max_payload_bytes=options.max_payload_bytes,
        )  # fmt: skip
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        # The slot loops: one task per unit of concurrency, each running one attempt at a time.
        # Idle ones wait for _rows_ready, which the producer and the heartbeat set.
        self._slot_tasks: list[asyncio.Task[None]] = []
        self._rows_ready = asyncio.Event()
        # One sweep stops attempts past expire_in: it sleeps until the earliest deadline, and a
        # job starting with an earlier one than that wakes it.
        self._sweep_at = float("inf")
        self._deadline_moved = asyncio.Event()
        # Set when the next job of these queues falls due, after a fetch found nothing to do.
        self._due_timer: asyncio.TimerHandle | None = None
        # When the next due time was last looked up (monotonic), and the timer of a look-up
        # put off (see NEXT_DUE_SPACING).
        self._due_asked_at = -NEXT_DUE_SPACING
        self._due_recheck: asyncio.TimerHandle | None = None
        # When the last heartbeat that went through was sent. A worker frozen (SIGSTOP, a paused
        # VM) or cut off past stale_after is presumed dead and its claims handed to others, so
        # claims it buffered are started only while its liveness is recent.
        self._alive_at = time.monotonic()
        self._verify_claims = asyncio.Event()
        # Counts the times this worker learnt it had been presumed dead: a claim whose fetch was
        # under way meanwhile may have been recovered before it arrived, so it is checked.
        self._presumed_dead = 0
        self._stop = asyncio.Event()
        self._hard_stop = asyncio.Event()
        self.jobs_run = 0
        self._completer = Completer(
            self._store,
            self.id,
            clock,
            self._on_acked,
            self._on_worker_error,
            flush_interval=options.flush_interval,
        )

    # -- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop fetching and finish in-flight jobs within the shutdown timeout."""
        self._stop.set()

    def stop_now(self) -> None:
        """Stop at once: in-flight jobs are handed back to the queue, attempt not spent."""
        self._stop.set()
        self._hard_stop.set()

    # -- main loop -------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until stopped; return how many attempts this worker ran."""
        self._loop = asyncio.get_running_loop()
        # A crash loop is slowed to one restart every 5 s at most, so a worker whose completer
        # or heartbeat failed for a moment is never held back from its jobs for long.
        supervisor = self._supervisor = Supervisor(self._on_service_error, max_backoff=5.0)
        try:
            await self._store.worker_register(
                self.id, socket.gethostname(), os.getpid(), self.options.queues,
                self.options.concurrency,
            )  # fmt: skip
            served = set(self.options.queues)
            for queue in await self._store.queue_list():
                if queue.name in served and queue.rate_limit and queue.rate_interval:
                    every = max(0.01, queue.rate_interval / queue.rate_limit)
                    self._token_interval = min(self._token_interval, every)
                if queue.name in served and queue.fair:
                    self._fair_queues.add(queue.name)
            if self._fair_queues:
                await self._keep_express_connection()
            supervisor.start("completer", self._completer.run, essential=True)
            supervisor.start("heartbeat", self._heartbeat, essential=True)
            context = ServiceContext(
                self._store, self.id, self._events, self._clock, self.options.stale_after
            )
            for service in self._services:
                supervisor.start(type(service).__name__.lower(), _bind(service, context))
            listen_dsn = self._store.listen_dsn
            if not self.options.burst and listen_dsn is None:
                log.warning(
                    "no LISTEN connection (PgBouncer without listen_dsn): looking for jobs "
                    "every %gs instead of being woken; cancelling a running job waits for the "
                    "next heartbeat",
                    self.options.poll_interval,
                )
            if not self.options.burst and listen_dsn is not None:
                listener = Listener(
                    listen_dsn,
                    [self._store.channel, self._store.cancel_channel],
                    self._on_notify,
                    self._wake.set,
                    application_name=f"conveyor-worker {self._schema}",
                )
                supervisor.start("listener", listener.run)
                # Listen before the first fetch, so no cancellation of a job it runs is missed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.connected.wait(), 5)
            self._slot_tasks = [
                asyncio.create_task(self._slot(), name=f"conveyor-slot-{n}")
                for n in range(self.options.concurrency)
            ]
            sweep = asyncio.create_task(self._sweep_expired(), name="conveyor-expiry")
            try:
                await self._produce()
                if self._express_task is not None:  # its claims join the buffer handed back
                    await asyncio.wait([self._express_task])
                await self._shutdown()
            finally:
                sweep.cancel()
                if self._express_task is not None:  # done unless the producer failed
                    self._express_task.cancel()
                for timer in (self._due_timer, self._due_recheck):
                    if timer is not None:
                        timer.cancel()
                for slot in self._slot_tasks:
                    slot.cancel()
        finally:
            await supervisor.stop()
            await self._completer.drain()
            with contextlib.suppress(DatabaseUnavailable):
                await self._store.worker_deregister(self.id)
            self._threads.shutdown()
            await self._transactions.close()
            await self._store.close()
        return self.jobs_run

    def health(self) -> dict[str, Any]:
        """What this worker reports with its heartbeat: services down, stuck handler threads,
        and the claims still waiting in its buffer ("id/attempt"; if the worker dies, recovery
        does not count those attempts against their jobs, since they never started)."""
        supervisor = getattr(self, "_supervisor", None)
        down = {} if supervisor is None else {
            name: supervisor.states[name].last_error for name in supervisor.down()
        }  # fmt: skip
        unstarted = [f"{row[rows.FETCHED_ID]}/{row[rows.FETCHED_ATTEMPT]}" for row in self._buffer]
        return {"services_down": down, "stuck_threads": self._threads.stuck, "unstarted": unstarted}

    async def _produce(self) -> None:
        opts = self.options
        failures = 0
        while not self._stop.is_set():
            if not self._supervisor.essential_up.is_set():
                # Outcomes of jobs claimed now could not be written, nor the claims kept alive.
                # (Not through _wait: the supervisor owns this flag, it must not be cleared.)
                await first_of(self._stop.wait(), self._supervisor.essential_up.wait())
                continue
            capacity = self._capacity()
            room = capacity - len(self._running) - len(self._buffer)
            if room < min(opts.concurrency, self._refill_at) or room <= 0:
                await self._wait(self._slot_freed)
                continue
            try:
                presumed_dead = self._presumed_dead
                asked_at = time.monotonic()
                jobs = await self._completer.fetch(opts.queues, room)
                if jobs and presumed_dead != self._presumed_dead:
                    jobs = await self._still_held(jobs)
                if self._paused_at:
                    jobs = self._unpaused(jobs, asked_at)
                failures = 0
            except DatabaseUnavailable as exc:
                failures += 1
                self._on_worker_error(exc)
                await self._wait(None, min(10.0, 0.1 * 2**failures))
                continue
            self._learn_fair(jobs)
            admit_claimed(self._buffer, jobs)
            self._start_buffered()
            if len(jobs) == room:
                # A full batch: more may be waiting. Refill once a good share of the room is
                # free again, so fetches stay batched instead of one per finished job.
                self._refill_at = max(1, capacity // 4)
                continue
            self._refill_at = 1
            if opts.burst:
                if jobs or self._running:
                    await self._wait(self._slot_freed)
                    continue
                # Nothing due and nothing running: write pending outcomes (a retry due now exists
                # only once acknowledged), then look once more before calling it done.
                await self._completer.drain()
                again = await self._store.job_fetch(opts.queues, self.id, room, self._clock())
                if not again:
                    return
                admit_claimed(self._buffer, again)
                self._start_buffered()
                continue
            # A short fetch: whatever falls due next is announced by no NOTIFY.
            await self._wake_when_due()
            poll = min(opts.poll_interval, self._token_interval) * (0.75 + random.random() / 2)
            self._idle = True
            try:
                await self._wait(self._wake, poll)
            finally:
                self._idle = False

    def _learn_fair(self, claimed: list[tuple[Any, ...]]) -> None:
        """Note the fair queues among the claimed rows' (a fair claim carries the key in meta),
        made fair since the worker started. One made unfair since stays noted: all that costs
        is an express fetch now and then that a plain fetch would have made anyway."""
        fair = self._fair_queues
        for row in claimed:
            meta = row[rows.FETCHED_META]
            if meta is not None and "fair_key" in meta and row[rows.FETCHED_QUEUE] not in fair:
                if not fair:  # the first: a connection for its express fetches
                    self._keeping_open = self._loop.create_task(self._keep_express_connection())
                fair.add(row[rows.FETCHED_QUEUE])

    async def _keep_express_connection(self) -> None:
        """Keep a connection open for the express fetch beside the producer's (a new one takes
        tens of ms, which the first express fetch would wait for)."""
        try:
            await self._store.keep_open(2)
        except Exception as exc:  # an optimisation: the express fetch opens one if need be
            log.debug("could not keep a connection open for express fetches: %s", exc)

    def _express(self, queue: str) -> None:
        """A job was sent to the fair queue ``queue`` while the producer is busy (a fetch under
        way, or waiting for room to fetch): claim a few of that queue's jobs now, beside it.

        At full drain speed a fetch of a few hundred jobs (and the acks riding with it) takes
        tens of ms, and a job sent just after one began waits for it and for the whole next one;
        the express fetch, a small claim on the worker's spare connection, gives the key just
        sent its turn in the few ms a small claim takes, and admit_claimed puts its job ahead of
        the buffer. The claim is the queue's own (claim_fair: every key in turn, after the last
        one served), so it serves the new job's key when the queue has at most as many keys with
        due jobs as it claims jobs, and otherwise the next keys in turn, as any fetch would.

        Only while a job it claims could start soon: a slot is free, or jobs are quick enough
        that the worker claims ahead (adaptive prefetch). A worker whose slots are all taken by
        long jobs claims nothing more; the producer's next fetch, when a slot frees, serves the
        turn, and meanwhile the jobs stay with workers that have room. At most one runs at a
        time; a send heard meanwhile makes it go once more."""
        if self._stop.is_set():
            return
        if self._express_task is not None and not self._express_task.done():
            self._express_again.add(queue)
            return
        self._express_task = asyncio.create_task(self._express_fetch(queue))

    async def _express_fetch(self, queue: str) -> None:
        while True:
            free = self._slots() - len(self._running)
            ahead = self._capacity() - self._slots()  # the prefetch the worker allows itself
            if free <= 0 and ahead <= 0:
                return
            # Two at least: with two keys, one claim of one job would serve the first key only.
            limit = max(2, min(EXPRESS_LIMIT, max(free, 0) + ahead))
            presumed_dead = self._presumed_dead
            asked_at = self._express_asked_at = time.monotonic()
            try:
                jobs = await self._store.job_fetch([queue], self.id, limit, self._clock())
                if jobs and presumed_dead != self._presumed_dead:
                    jobs = await self._still_held(jobs)
            except DatabaseUnavailable as exc:  # the producer's fetches find the job instead
                log.debug("express fetch of queue %s failed: %s", queue, exc)
                return
            finally:
                self._express_asked_at = None
            # Paused since it was sent: handed back. (Not through _unpaused, which forgets the
            # pauses older than this fetch that the producer's fetch, if sent earlier, must see.)
            paused = {q for q, at in self._paused_at.items() if at >= asked_at}
            if paused:
                self._release([row for row in jobs if row[rows.FETCHED_QUEUE] in paused])
                jobs = [row for row in jobs if row[rows.FETCHED_QUEUE] not in paused]
            admit_claimed(self._buffer, jobs)
            self._start_buffered()
            if not self._express_again or self._idle or self._stop.is_set():
                self._express_again.clear()
                return
            queue = self._express_again.pop()

    async def _wake_when_due(self) -> None:
        """Wake up when the next job of these queues falls due; the poll stays the fallback.

        Asked at most once per NEXT_DUE_SPACING: a short fetch sooner than that arms a timer
        instead, which wakes the producer to fetch and ask then."""
        wait = self._due_asked_at + NEXT_DUE_SPACING - time.monotonic()
        if wait > 0:
            if self._due_recheck is None:
                self._due_recheck = self._loop.call_later(wait, self._wake.set)
            return
        if self._due_recheck is not None:
            self._due_recheck.cancel()
            self._due_recheck = None
        self._due_asked_at = time.monotonic()
        try:
            seconds = await self._store.job_next_due(self.options.queues, self._clock())
        except Exception as exc:  # an optimisation: whatever fails, the poll still finds jobs
            self._on_worker_error(exc)
            return
        if self._due_timer is not None:
            self._due_timer.cancel()
        self._due_timer = None
        if seconds is not None:
            self._due_timer = self._loop.call_later(seconds, self._wake.set)

    def _slots(self) -> int:
        """Slots that can run a job now: each thread stuck past the pool's replacements holds
        one (see :mod:`conveyor.worker.threads`)."""
        return max(0, self.options.concurrency - self._threads.over_stuck_limit)

    def _capacity(self) -> int:
        """Slots plus how many jobs may wait claimed in the local buffer."""
        concurrency = self._slots()
        if self.options.prefetch is not None:
            return concurrency + self.options.prefetch
        if self._avg_duration is None:
            return concurrency
        ahead = int(concurrency * PREFETCH_WINDOW / max(self._avg_duration, 1e-5))
        return concurrency + min(MAX_PREFETCH, ahead)

    def _start_buffered(self) -> None:
        """Let idle slots take claimed jobs from the local buffer."""
        if self._buffer and not self._claims_fresh():
            self._verify_claims.set()  # the heartbeat first finds out which are still held
            return
        if self._buffer:
            self._rows_ready.set()

    def _claims_fresh(self) -> bool:
        """Whether this worker's liveness is recent enough to start what it claimed."""
        return time.monotonic() - self._alive_at <= self.options.stale_after / 2

    async def _wait(self, event: asyncio.Event | None, timeout: float | None = None) -> None:
        waits: list[Any] = [self._stop.wait()]
        if event is not None:
            waits.append(event.wait())
        if timeout is not None:
            waits.append(asyncio.sleep(timeout))
        await first_of(*waits)
        if event is not None:
            event.clear()

    # -- the slot loops ----------------------------------------------------------------------

    async def _slot(self) -> None:
        """Run claimed jobs one after another until the worker stops. A handler that never
        suspends does not hold the loop: the slot yields between such jobs every so often."""
        task = asyncio.current_task()
        assert task is not None
        buffer = self._buffer
        since_yield = 0
        while True:
            if (
                not buffer
                or self._stop.is_set()
                or len(self._running) >= self._slots()
                or not self._claims_fresh()
            ):
                if self._stop.is_set():
                    return
                if buffer and not self._claims_fresh():
                    self._verify_claims.set()
                self._rows_ready.clear()
                await self._rows_ready.wait()
                since_yield = 0
                continue
            running = self._begin(buffer.popleft(), task)
            traced = telemetry.attempt_started(running.job, self._tracer_provider)
            ack = await self._run(running)
            if running.stop_reason is not None and task.cancelling():
                task.uncancel()  # the handler swallowed the cancellation meant for it
            if running.runtime.completion is not None:  # the handler's own transaction
                ack = await self._settle_transaction(running, ack)
            self._end(running, ack)
            if traced is not None:  # None unless OpenTelemetry traces
                telemetry.attempt_ended(
                    traced, ack.outcome if ack else None, ack.error if ack else None,
                    completed_in_transaction=running.runtime.completion is not None,
                )  # fmt: skip
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)

    def _begin(self, row: tuple[Any, ...], slot: asyncio.Task[None]) -> Running:
        runtime = Runtime(
            row[rows.FETCHED_ID],
            row[rows.FETCHED_QUEUE],
            row[rows.FETCHED_ATTEMPT],
            self._loop,
            self._completer.progress,
            self._transactions,
        )
        job = rows.fetched_job(row, runtime)
        now = time.monotonic()
        running = Running(job, runtime, slot, now, now + job.expire_in)
        self._running[(job.id, job.attempt)] = running
        if running.deadline < self._sweep_at:
            self._deadline_moved.set()
        self.jobs_run += 1
        if self._events.wanted("job.started"):
            self._events.emit(Event("job.started", self.id, job))
        return running

    def _end(self, running: Running, ack: Ack | None) -> None:
        job = running.job
        self._running.pop((job.id, job.attempt), None)
        took = time.monotonic() - running.started
        avg = self._avg_duration
        self._avg_duration = took if avg is None else avg + (took - avg) * 0.1
        room = self._capacity() - len(self._running) - len(self._buffer)
        if room >= self._refill_at or not self._running:
            self._slot_freed.set()
        if ack is not None:
            if ack.outcome in self._outcomes_heard:
                self._pending[(ack.job_id, ack.attempt)] = (job, took)
            self._completer.add(ack)

    async def _run(self, running: Running) -> Ack | None:
        """One attempt, start to outcome; never raises (the slot goes on with the next job)."""
        job = running.job
        handler = self._registry.get(job.queue)
        try:
            if handler is None:
                raise ConfigurationError(f"no handler for queue {job.queue!r} in this worker")
            if job.depends_on:
                results = await self._store.job_results(job.depends_on)
                job = running.job = replace(job, results=results)
            if handler.is_async:
                result = await handler.func(job)
            else:
                running.future = self._threads.submit(handler.func, job)
                result = await self._handoff.watch(running.future)
        except asyncio.CancelledError as exc:
            if running.stop_reason is None:
                # Not a stop of this attempt (the handler cancelled itself, or raised it): a
                # failure like any other.
                return self._failure(job, handler, exc)
            running.slot.uncancel()
            return self._stopped(running, handler)
        except Retry as request:
            self._events.emit(Event("job.snoozed", self.id, job))
            try:
                return outcome.snoozed(job, request, self._clock())
            except InvalidRetryDelay as bad:
                return self._failure(job, handler, bad)
        except BaseException as exc:  # nothing a handler raises may reach the loop
            return self._failure(job, handler, exc)
        try:
            return outcome.completed(job, result, self.options.max_payload_bytes)
        except PayloadError as bad:
            # Running the handler again would produce the same result: fail now.
            return self._failure(job, handler, bad, kind="ResultNotStorable", final=True)

    def _stopped(self, running: Running, handler: Handler | None) -> Ack | None:
        """The outcome of an attempt stopped from outside: cancelled, expired or shut down."""
        job = running.job
        never_started = self._give_up(running.future)
        running.runtime.request_stop()
        if running.stop_reason == "cancelled":
            return None  # cancel() already moved the job to the history
        if never_started or running.stop_reason == "shutdown":
            # Still waiting for a thread, or handed back at shutdown: the attempt is not spent.
            return Ack(job.id, job.attempt, "release")
        return self._failure(job, handler, TimeoutError(), kind="Expired", message=(
            f"the attempt ran past expire_in ({job.expire_in:g} s) and was stopped"
        ))  # fmt: skip

    def _stop_attempt(self, running: Running, reason: str) -> None:
        """Stop a running attempt: its handler is cancelled (a sync one is told and left)."""
        if running.stop_reason is None:
            running.stop_reason = reason
            running.runtime.request_stop()
            running.slot.cancel()

    async def _sweep_expired(self) -> None:
        """Stop the attempts that ran past their expire_in."""
        while True:
            now = time.monotonic()
            for running in list(self._running.values()):
                if running.deadline <= now:
                    self._stop_attempt(running, "expired")
            self._sweep_at = min(
                (r.deadline for r in self._running.values() if r.stop_reason is None),
                default=float("inf"),
            )
            self._deadline_moved.clear()
            timeout = None if self._sweep_at == float("inf") else self._sweep_at - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._deadline_moved.wait(), timeout)

    async def _settle_transaction(self, running: Running, ack: Ack | None) -> Ack | None:
        """The outcome of an attempt that completed, or tried to, in a transaction of its own
        (worker/transaction.py)."""
        # The handler has returned: from here nothing may cancel the slot (a late cancel() or
        # expiry would end the slot loop itself in this await).
        running.stop_reason = running.stop_reason or "settling"
        job = running.job
        handler = self._registry.get(job.queue)
        ack = await self._transactions.outcome(
            running.runtime, ack, lambda exc, kind: self._failure(job, handler, exc, kind=kind)
        )
        done = running.runtime.completion
        if ack is None and done is not None and self._events.wanted("job.completed"):
            took = time.monotonic() - running.started
            self._events.emit(
                Event("job.completed", self.id, job, result=done.result, duration=took)
            )
        return ack

    def _give_up(self, future: concurrent.futures.Future[Any] | None) -> bool:
        """Stop waiting for a sync handler's call; True if it never started (and now never
        will). A call that runs on is abandoned: its thread is replaced, and counted."""
        if future is None:
            return False
        if future.cancel():
            return True
        if not future.done():
            self._threads.abandon(future)
            log.warning(
                "a sync handler ignored its cancellation and still runs: %d handler thread(s) "
                "stuck; the worker runs the next jobs on fresh threads",
                self._threads.stuck,
            )
        return False

    def _failure(
        self,
        job: Job,
        handler: Handler | None,
        exc: BaseException,
        *,
        kind: str | None = None,
        message: str | None = None,
        final: bool = False,
    ) -> Ack:
        running = self._running.get((job.id, job.attempt))
        started_at = None if running is None else datetime.fromtimestamp(running.started_wall, UTC)
        error = outcome.describe(exc, job, self.id, kind, started_at)
        if message is not None:
            error["message"] = message
        self._events.emit(Event("job.attempt_failed", self.id, job, error=error))
        return outcome.failed(job, handler, exc, error, self._rng, final=final)

    # -- acks, notifications, liveness -----------------------------------------------------

    def _on_acked(self, ack: Ack, changed: Changed | None) -> None:
        job, took = self._pending.pop((ack.job_id, ack.attempt), (None, None))
        if changed is not None and ack.delay:
            # A retry or snooze this worker scheduled: no NOTIFY will announce it when it falls
            # due, so wake up then instead of waiting for the next poll.
            asyncio.get_running_loop().call_later(ack.delay, self._wake.set)
        if changed is None:
            if ack.outcome != "release":
                log.warning(
                    "outcome %s of job %s attempt %d refused: the attempt no longer holds the job "
                    "(rescued, expired or cancelled)", ack.outcome, ack.job_id, ack.attempt,
                )  # fmt: skip
            return
        for name in _ACKED_EVENTS.get(ack.outcome, ()):
            if self._events.wanted(name):
                result = json.loads(ack.result) if ack.result is not None else None
                error = json.loads(ack.error) if ack.error is not None else None
                self._events.emit(
                    Event(name, self.id, job, error=error, result=result, duration=took)
                )

    def _on_service_error(self, service: str, exc: BaseException) -> None:
        self._events.emit(
            Event("worker.error", self.id, error={"service": service, "message": str(exc)})
        )

    def _on_worker_error(self, exc: BaseException) -> None:
        log.warning("worker %s: %s", self.id, exc)
        self._events.emit(Event("worker.error", self.id, error={"message": str(exc)}))

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == self._store.cancel_channel and payload.startswith(PAUSED_PREFIX):
            self._on_pause(payload[len(PAUSED_PREFIX) :])
        elif channel == self._store.cancel_channel:
            # "id" from cancel(); "id/attempt" from recovery, which must not stop a later
            # attempt of the same job that this worker may have claimed since.
            job_id, _, attempt = payload.partition("/")
            with contextlib.suppress(ValueError):
                self._cancel_running(uuid.UUID(job_id), int(attempt) if attempt else None)
        elif payload in self.options.queues:
            self._wake.set()
            if not self._idle and payload in self._fair_queues:
                self._express(payload)

    def _on_pause(self, queue: str) -> None:
        """A queue was paused: its claims waiting in the buffer go back to it unstarted (the
        attempt given back), and so do those of a fetch already under way, which may have
        claimed them before the pause committed."""
        if queue not in self.options.queues:
            return
        self._paused_at[queue] = time.monotonic()
        if any(row[rows.FETCHED_QUEUE] == queue for row in self._buffer):
            kept = [row for row in self._buffer if row[rows.FETCHED_QUEUE] != queue]
            self._release([row for row in self._buffer if row[rows.FETCHED_QUEUE] == queue])
            self._buffer.clear()  # in place: the slot loops hold this deque
            self._buffer.extend(kept)

    def _unpaused(self, claimed: list[Any], asked_at: float) -> list[Any]:
        """The rows of a fetch sent at ``asked_at`` but those of queues paused since. The
        pauses heard before it, and before the express fetch under way if any, are forgotten:
        no fetch still to return was sent before them."""
        paused = {queue for queue, at in self._paused_at.items() if at >= asked_at}
        if self._express_asked_at is not None:
            asked_at = min(asked_at, self._express_asked_at)
        self._paused_at = {q: at for q, at in self._paused_at.items() if at >= asked_at}
        if not paused:
            return claimed
        self._release([row for row in claimed if row[rows.FETCHED_QUEUE] in paused])
        return [row for row in claimed if row[rows.FETCHED_QUEUE] not in paused]

    def _release(self, claimed: list[Any]) -> None:
        for row in claimed:
            self._completer.add(Ack(row[rows.FETCHED_ID], row[rows.FETCHED_ATTEMPT], "release"))

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            interval = self.options.heartbeat_interval * (0.8 + random.random() * 0.4)
            await first_of(stop.wait(), asyncio.sleep(interval), self._verify_claims.wait())
            self._verify_claims.clear()
            if stop.is_set():
                return
            try:
                sent_at = time.monotonic()
                await self._stop_lost_attempts()
                if not await self._store.worker_heartbeat(self.id, self.health()):
                    log.warning("worker %s was presumed dead; registering again", self.id)
                    self._presumed_dead += 1
                    sent_at = time.monotonic()
                    await self._store.worker_register(
                        self.id, socket.gethostname(), os.getpid(), self.options.queues,
                        self.options.concurrency,
                    )  # fmt: skip
                    # Recovery took back what this worker held then, including claims that
                    # reached the buffer after the check above.
                    await self._stop_lost_attempts()
                self._alive_at = sent_at
                self._start_buffered()
                self._slot_freed.set()
            except DatabaseUnavailable as exc:
                self._on_worker_error(exc)

    async def _stop_lost_attempts(self) -> None:
        """Stop attempts, running or claimed and waiting in the buffer, whose job was cancelled
        or recovered while a NOTIFY was missed or while this worker was frozen or cut off."""
        running = [(r.job.id, r.job.attempt) for r in self._running.values()]
        running += [(row[rows.FETCHED_ID], row[rows.FETCHED_ATTEMPT]) for row in self._buffer]
        if not running:
            return
        held = await self._store.job_held(self.id, running)
        for job_id, _attempt in running:
            if job_id not in held:
                self._cancel_running(job_id, _attempt)

    async def _still_held(self, claimed: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The claims among ``claimed`` that recovery has not taken back."""
        attempts = [(row[rows.FETCHED_ID], row[rows.FETCHED_ATTEMPT]) for row in claimed]
        held = await self._store.job_held(self.id, attempts)
        return [row for row in claimed if row[rows.FETCHED_ID] in held]

    def _cancel_running(self, job_id: uuid.UUID, attempt: int | None = None) -> None:
        def lost(row: tuple[Any, ...]) -> bool:
            return row[rows.FETCHED_ID] == job_id and attempt in (None, row[rows.FETCHED_ATTEMPT])

        if any(lost(row) for row in self._buffer):
            # Claimed but not started: it must not start at all.
            if attempt is None and self._events.wanted("job.cancelled"):  # cancel(), not recovery
                row = next(row for row in self._buffer if lost(row))
                self._events.emit(Event("job.cancelled", self.id, job_id=job_id,
                                        queue=row[rows.FETCHED_QUEUE]))  # fmt: skip
            kept = [row for row in self._buffer if not lost(row)]
            self._buffer.clear()  # in place: the slot loops hold this deque
            self._buffer.extend(kept)
        for (running_id, running_attempt), running in list(self._running.items()):
            if running_id == job_id and attempt in (None, running_attempt):
                told = attempt is None and running.stop_reason is None  # cancel(), not recovery
                if told and self._events.wanted("job.cancelled"):
                    self._events.emit(Event("job.cancelled", self.id, running.job))
                self._stop_attempt(running, "cancelled")

    # -- shutdown --------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        # Claimed but never started: hand back at once, the attempt not spent.
        while self._buffer:
            row = self._buffer.popleft()
            self._completer.add(Ack(row[rows.FETCHED_ID], row[rows.FETCHED_ATTEMPT], "release"))
        self._rows_ready.set()  # idle slots see the stop and end
        slots = self._slot_tasks
        if self._running and not self._hard_stop.is_set():
            log.info(
                "waiting up to %gs for %d job(s)", self.options.shutdown_timeout, len(self._running)
            )
            await first_of(
                asyncio.wait(slots), asyncio.sleep(self.options.shutdown_timeout),
                self._hard_stop.wait(),
            )  # fmt: skip
        for running in list(self._running.values()):
            self._stop_attempt(running, "shutdown")
        if self._running:
            await asyncio.wait(slots, timeout=5)


# Events emitted once an outcome is written, by outcome: "failed" is the job's last attempt (the
# job is in the dead letters), for which ``job.dead`` is kept as a synonym of ``job.failed``.
_ACKED_EVENTS: dict[str, tuple[str, ...]] = {
    "completed": ("job.completed",),
    "failed": ("job.failed", "job.dead"),
    "retry": ("job.retried",),
}


def _bind(service: Service, context: ServiceContext) -> Callable[[asyncio.Event], Any]:
    """The service's loop as the supervisor runs it."""

    def run(stop: asyncio.Event) -> Any:
        return service.run(context, stop)

    return run
