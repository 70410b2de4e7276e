"""The worker: it composes the parts that serve some queues, starts them, routes what it hears
to them, and shuts them down gracefully.

- the producer (producer.py) claims jobs into the local buffer;
- the executor (executor.py) runs them in ``concurrency`` slot loops and stops attempts past
  ``expire_in``;
- the completer (completer.py) writes outcomes in batches, folded into the next claim when it
  can;
- the heartbeat (heartbeat.py) keeps the worker alive in the database and finds lost attempts;
- the listener hears sends, cancellations and pauses; the app's services (recovery, cron, ...)
  run beside them.

The completer, the heartbeat, the listener and the services are supervised (supervisor.py):
one that fails is restarted, and no job is claimed while the completer or the heartbeat is down.
They share their state through one :class:`~conveyor.worker.state.WorkerState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from conveyor._store.listen import Listener
from conveyor._store.worker_store import WorkerStore
from conveyor.errors import ConfigurationError, DatabaseUnavailable
from conveyor.events import Event, Events
from conveyor.handlers import Registry
from conveyor.worker.completer import Completer
from conveyor.worker.executor import Executor
from conveyor.worker.heartbeat import Heartbeat
from conveyor.worker.producer import Producer
from conveyor.worker.service import Service, ServiceContext
from conveyor.worker.state import WorkerOptions, WorkerState
from conveyor.worker.supervisor import Supervisor
from conveyor.worker.threads import DaemonThreadPool
from conveyor.worker.transaction import Transactions

__all__ = ["Worker", "WorkerOptions"]

log = logging.getLogger("conveyor.worker")

# pause_queue's notification on the cancel channel (whose other payloads are job ids).
PAUSED_PREFIX = "paused:"
# On the wake-up channel, from a worker that gives its idle marks up (worker_unmark_idle).
UNMARKED_PREFIX = "unmarked:"


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
        self._events = events
        self._services = list(services)
        self._clock = clock
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
        self._threads = DaemonThreadPool(options.concurrency, "conveyor-job")
        self._transactions = Transactions(
            dsn, schema, self.id, size=options.concurrency, prepare=not pgbouncer, clock=clock,
            max_payload_bytes=options.max_payload_bytes,
        )  # fmt: skip
        completer = Completer(
            self._store,
            self.id,
            clock,
            lambda ack, changed: self._executor.on_acked(ack, changed),
            self._on_worker_error,
            flush_interval=options.flush_interval,
        )
        self._state = WorkerState(
            self.id, options, self._store, completer, self._threads, events, clock,
            self._on_worker_error,
        )  # fmt: skip
        self._executor = Executor(
            self._state, registry, self._transactions, rng=rng, tracer_provider=tracer_provider
        )
        self._heartbeat = Heartbeat(self._state, self.health, self._executor.cancel)
        # A crash loop is slowed to one restart every 5 s at most, so a worker whose completer
        # or heartbeat failed for a moment is never held back from its jobs for long.
        self._supervisor = Supervisor(self._on_service_error, max_backoff=5.0)
        self._producer = Producer(self._state, self._supervisor.essential_up)

    @property
    def jobs_run(self) -> int:
        """How many attempts this worker started."""
        return self._executor.jobs_run

    # -- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop fetching and finish in-flight jobs within the shutdown timeout."""
        self._state.stop.set()

    def stop_now(self) -> None:
        """Stop at once: in-flight jobs are handed back to the queue, attempt not spent."""
        self._state.stop.set()
        self._state.hard_stop.set()

    # -- main loop -------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until stopped; return how many attempts this worker ran."""
        state, supervisor, producer = self._state, self._supervisor, self._producer
        try:
            await self._heartbeat.register()
            await producer.prepare()
            supervisor.start("completer", state.completer.run, essential=True)
            supervisor.start("heartbeat", self._heartbeat.run, essential=True)
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
                    state.wake.set,
                    application_name=f"conveyor-worker {self._schema}",
                )
                producer.listener = listener
                supervisor.start("listener", listener.run)
                # Listen before the first fetch, so no cancellation of a job it runs is missed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.connected.wait(), 5)
            self._executor.start()
            try:
                await producer.run()
                # Claimed but never started: handed back at once, the attempt not spent.
                producer.release(list(state.buffer))
                state.buffer.clear()
                await self._executor.finish()
            finally:
                producer.close()
                self._executor.close()
        finally:
            await supervisor.stop()
            await state.completer.drain()
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
        supervisor = self._supervisor
        down = {name: supervisor.states[name].last_error for name in supervisor.down()}
        unstarted = [f"{job_id}/{attempt}" for job_id, attempt in self._state.unstarted()]
        return {"services_down": down, "stuck_threads": self._threads.stuck, "unstarted": unstarted}

    # -- what the worker hears, and its errors ---------------------------------------------

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == self._store.cancel_channel and payload.startswith(PAUSED_PREFIX):
            self._producer.paused(payload[len(PAUSED_PREFIX) :])
        elif channel == self._store.cancel_channel:
            # "id" from cancel(); "id/attempt" from recovery, which must not stop a later
            # attempt of the same job that this worker may have claimed since.
            job_id, _, attempt = payload.partition("/")
            with contextlib.suppress(ValueError):
                self._executor.cancel(uuid.UUID(job_id), int(attempt) if attempt else None)
        elif payload in self.options.queues:  # first: a queue's name may start like the prefix
            self._producer.heard(payload)
        elif payload.startswith(UNMARKED_PREFIX):
            self._producer.unmarked(payload[len(UNMARKED_PREFIX) :])

    def _on_service_error(self, service: str, exc: BaseException) -> None:
        self._events.emit(
            Event("worker.error", self.id, error={"service": service, "message": str(exc)})
        )

    def _on_worker_error(self, exc: BaseException) -> None:
        log.warning("worker %s: %s", self.id, exc)
        self._events.emit(Event("worker.error", self.id, error={"message": str(exc)}))


def _bind(service: Service, context: ServiceContext) -> Callable[[asyncio.Event], Any]:
    """The service's loop as the supervisor runs it."""

    def run(stop: asyncio.Event) -> Any:
        return service.run(context, stop)

    return run
