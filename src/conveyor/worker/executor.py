"""The worker's executor: ``concurrency`` slot loops that take claimed jobs from the local
buffer and run them one after another, one sweep that stops attempts past ``expire_in``, and
the outcome of each attempt handed to the completer.

A slot is an asyncio task; a sync handler runs on a thread of a pool of the same size, and its
end reaches the loop through :class:`~conveyor.worker.threads.LoopHandoff`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from conveyor import telemetry
from conveyor._store import rows
from conveyor._store.worker_store import Ack, Changed
from conveyor.errors import ConfigurationError, InvalidRetryDelay, PayloadError, Retry
from conveyor.events import Event
from conveyor.handlers import Handler, Registry
from conveyor.models import Job
from conveyor.worker import outcome
from conveyor.worker.runtime import Runtime
from conveyor.worker.state import WorkerState
from conveyor.worker.threads import LoopHandoff
from conveyor.worker.transaction import Transactions
from conveyor.worker.waiting import first_of

log = logging.getLogger("conveyor.worker")

# A slot whose handlers finish without suspending gives the event loop a turn this often.
YIELD_EVERY = 16

# Events emitted once an outcome is written, by outcome: "failed" is the job's last attempt (the
# job is in the dead letters), for which ``job.dead`` is kept as a synonym of ``job.failed``.
ACKED_EVENTS: dict[str, tuple[str, ...]] = {
    "completed": ("job.completed",),
    "failed": ("job.failed", "job.dead"),
    "retry": ("job.retried",),
}


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


class Executor:
    """Runs claimed jobs in ``concurrency`` slots until the worker stops."""

    def __init__(
        self,
        state: WorkerState,
        registry: Registry,
        transactions: Transactions,
        *,
        rng: Callable[[], float] = random.random,
        tracer_provider: Any = None,
    ) -> None:
        self._state = state
        self._registry = registry
        self._transactions = transactions
        self._rng = rng
        self._tracer_provider = tracer_provider  # OpenTelemetry's; None: the global one
        self._loop = asyncio.get_running_loop()
        self._handoff = LoopHandoff(self._loop)
        # Acked jobs until written, kept only to hand them to outcome listeners, and only for
        # the outcomes someone listens to (a quiet success costs nothing here).
        self._pending: dict[tuple[uuid.UUID, int], tuple[Job, float]] = {}
        self._outcomes_heard = frozenset(
            outcome
            for outcome, names in ACKED_EVENTS.items()
            if any(state.events.wanted(name) for name in names)
        )
        # The slot loops: one task per unit of concurrency, each running one attempt at a time.
        # Idle ones wait for rows_ready, which the producer and the heartbeat set.
        self._slot_tasks: list[asyncio.Task[None]] = []
        # One sweep stops attempts past expire_in: it sleeps until the earliest deadline, and a
        # job starting with an earlier one than that wakes it.
        self._sweep: asyncio.Task[None] | None = None
        self._sweep_at = float("inf")
        self._deadline_moved = asyncio.Event()
        self.jobs_run = 0

    def start(self) -> None:
        """Start the slot loops and the expiry sweep."""
        self._slot_tasks = [
            asyncio.create_task(self._slot(), name=f"conveyor-slot-{n}")
            for n in range(self._state.options.concurrency)
        ]
        self._sweep = asyncio.create_task(self._sweep_expired(), name="conveyor-expiry")

    async def finish(self) -> None:
        """Once the producer stopped and handed the buffer back: let the running attempts end
        within the shutdown timeout (at once on a hard stop), then stop the rest, handed back
        with their attempt unspent."""
        state = self._state
        state.rows_ready.set()  # idle slots see the stop and end
        slots = self._slot_tasks
        if state.running and not state.hard_stop.is_set():
            timeout = state.options.shutdown_timeout
            log.info("waiting up to %gs for %d job(s)", timeout, len(state.running))
            await first_of(asyncio.wait(slots), asyncio.sleep(timeout), state.hard_stop.wait())
        for running in list(state.running.values()):
            self._stop_attempt(running, "shutdown")
        if state.running:
            await asyncio.wait(slots, timeout=5)

    def close(self) -> None:
        """Cancel the slot loops and the sweep (after finish(), or when the worker failed)."""
        if self._sweep is not None:
            self._sweep.cancel()
        for slot in self._slot_tasks:
            slot.cancel()

    # -- the slot loops ----------------------------------------------------------------------

    async def _slot(self) -> None:
        """Run claimed jobs one after another until the worker stops. A handler that never
        suspends does not hold the loop: the slot yields between such jobs every so often."""
        task = asyncio.current_task()
        assert task is not None
        state = self._state
        buffer = state.buffer
        since_yield = 0
        while True:
            if (
                not buffer
                or state.stop.is_set()
                or len(state.running) >= state.slots()
                or not state.claims_fresh()
            ):
                if state.stop.is_set():
                    return
                if buffer and not state.claims_fresh():
                    state.verify_claims.set()
                state.rows_ready.clear()
                await state.rows_ready.wait()
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
            if since_yield >= YIELD_EVERY or (state.awaiting_room and state.slot_freed.is_set()):
                since_yield = 0
                await asyncio.sleep(0)

    def _begin(self, row: tuple[Any, ...], slot: asyncio.Task[None]) -> Running:
        state = self._state
        runtime = Runtime(
            row[rows.FETCHED_ID],
            row[rows.FETCHED_QUEUE],
            row[rows.FETCHED_ATTEMPT],
            self._loop,
            state.completer.progress,
            self._transactions,
        )
        job = rows.fetched_job(row, runtime)
        now = time.monotonic()
        running = Running(job, runtime, slot, now, now + job.expire_in)
        state.running[(job.id, job.attempt)] = running
        if running.deadline < self._sweep_at:
            self._deadline_moved.set()
        self.jobs_run += 1
        if state.events.wanted("job.started"):
            state.events.emit(Event("job.started", state.id, job))
        return running

    def _end(self, running: Running, ack: Ack | None) -> None:
        state = self._state
        job = running.job
        state.running.pop((job.id, job.attempt), None)
        took = time.monotonic() - running.started
        avg = state.avg_duration
        state.avg_duration = took if avg is None else avg + (took - avg) * 0.1
        if state.fetch_wanted() or not state.running:
            state.slot_freed.set()
        if ack is not None:
            if ack.outcome in self._outcomes_heard:
                self._pending[(ack.job_id, ack.attempt)] = (job, took)
            state.completer.add(ack)

    async def _run(self, running: Running) -> Ack | None:
        """One attempt, start to outcome; never raises (the slot goes on with the next job)."""
        state = self._state
        job = running.job
        handler = self._registry.get(job.queue)
        try:
            if handler is None:
                raise ConfigurationError(f"no handler for queue {job.queue!r} in this worker")
            if job.depends_on:
                results = await state.store.job_results(job.depends_on)
                job = running.job = replace(job, results=results)
            if handler.is_async:
                result = await handler.func(job)
            else:
                running.future = state.threads.submit(handler.func, job)
                result = await self._handoff.watch(running.future)
        except asyncio.CancelledError as exc:
            if running.stop_reason is None:
                # Not a stop of this attempt (the handler cancelled itself, or raised it): a
                # failure like any other.
                return self._failure(job, handler, exc)
            running.slot.uncancel()
            return self._stopped(running, handler)
        except Retry as request:
            state.events.emit(Event("job.snoozed", state.id, job))
            try:
                return outcome.snoozed(job, request, state.clock())
            except InvalidRetryDelay as bad:
                return self._failure(job, handler, bad)
        except BaseException as exc:  # nothing a handler raises may reach the loop
            return self._failure(job, handler, exc)
        try:
            return outcome.completed(job, result, state.options.max_payload_bytes)
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
        running_now = self._state.running
        while True:
            now = time.monotonic()
            for running in list(running_now.values()):
                if running.deadline <= now:
                    self._stop_attempt(running, "expired")
            self._sweep_at = min(
                (r.deadline for r in running_now.values() if r.stop_reason is None),
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
        state = self._state
        job = running.job
        handler = self._registry.get(job.queue)
        ack = await self._transactions.outcome(
            running.runtime, ack, lambda exc, kind: self._failure(job, handler, exc, kind=kind)
        )
        done = running.runtime.completion
        if ack is None and done is not None and state.events.wanted("job.completed"):
            took = time.monotonic() - running.started
            state.events.emit(
                Event("job.completed", state.id, job, result=done.result, duration=took)
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
            threads = self._state.threads
            threads.abandon(future)
            log.warning(
                "a sync handler ignored its cancellation and still runs: %d handler thread(s) "
                "stuck; the worker runs the next jobs on fresh threads",
                threads.stuck,
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
        state = self._state
        running = state.running.get((job.id, job.attempt))
        started_at = None if running is None else datetime.fromtimestamp(running.started_wall, UTC)
        error = outcome.describe(exc, job, state.id, kind, started_at)
        if message is not None:
            error["message"] = message
        state.events.emit(Event("job.attempt_failed", state.id, job, error=error))
        return outcome.failed(job, handler, exc, error, self._rng, final=final)

    # -- outcomes written, attempts stopped from outside -----------------------------------

    def on_acked(self, ack: Ack, changed: Changed | None) -> None:
        """An outcome was written (``changed``), or refused (None): the attempt had lost its
        job. Emits the outcome's events to whoever listens."""
        state = self._state
        job, took = self._pending.pop((ack.job_id, ack.attempt), (None, None))
        if changed is not None and ack.delay:
            # A retry or snooze this worker scheduled: no NOTIFY will announce it when it falls
            # due, so wake up then instead of waiting for the next poll.
            self._loop.call_later(ack.delay, state.wake.set)
        if changed is None:
            if ack.outcome != "release":
                log.warning(
                    "outcome %s of job %s attempt %d refused: the attempt no longer holds the job "
                    "(rescued, expired or cancelled)", ack.outcome, ack.job_id, ack.attempt,
                )  # fmt: skip
            return
        for name in ACKED_EVENTS.get(ack.outcome, ()):
            if state.events.wanted(name):
                result = json.loads(ack.result) if ack.result is not None else None
                error = json.loads(ack.error) if ack.error is not None else None
                state.events.emit(
                    Event(name, state.id, job, error=error, result=result, duration=took)
                )

    def cancel(self, job_id: uuid.UUID, attempt: int | None = None) -> None:
        """Stop the job's attempt (every attempt when ``attempt`` is None: a cancel()), running
        or claimed and waiting in the buffer, where it must not start at all."""
        state = self._state
        buffer = state.buffer

        def lost(row: tuple[Any, ...]) -> bool:
            return row[rows.FETCHED_ID] == job_id and attempt in (None, row[rows.FETCHED_ATTEMPT])

        if any(lost(row) for row in buffer):
            if attempt is None and state.events.wanted("job.cancelled"):  # cancel(), not recovery
                row = next(row for row in buffer if lost(row))
                state.events.emit(Event("job.cancelled", state.id, job_id=job_id,
                                        queue=row[rows.FETCHED_QUEUE]))  # fmt: skip
            kept = [row for row in buffer if not lost(row)]
            buffer.clear()
            buffer.extend(kept)
        for (running_id, running_attempt), running in list(state.running.items()):
            if running_id == job_id and attempt in (None, running_attempt):
                told = attempt is None and running.stop_reason is None  # cancel(), not recovery
                if told and state.events.wanted("job.cancelled"):
                    state.events.emit(Event("job.cancelled", state.id, running.job))
                self._stop_attempt(running, "cancelled")
