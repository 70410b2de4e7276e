"""The :class:`Conveyor` application: configuration and the composition root of the public API."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from conveyor._client import Client
from conveyor._client_async import AsyncClient
from conveyor._store.stores import Stores
from conveyor.backoff import RetryPolicy
from conveyor.clock import Clock, database_clock
from conveyor.config import (
    DEFAULT_DEAD_RETENTION,
    DEFAULT_PAYLOAD_LIMIT,
    DEFAULT_RETENTION,
    DEFAULT_SCHEMA,
    Settings,
)
from conveyor.errors import ConfigurationError, InvalidOption, UnknownOption
from conveyor.events import Events, Listener
from conveyor.handlers import HandlerFunc, Registry
from conveyor.maintenance import Maintenance
from conveyor.options import (
    DEFAULTABLE,
    QUEUE_OPTIONS,
    check_defaultable,
    check_int,
    check_schema_name,
    check_seconds,
)
from conveyor.rollup import StatsRollup
from conveyor.scheduler import Scheduler
from conveyor.worker import logs, signals
from conveyor.worker.runner import Worker, WorkerOptions
from conveyor.worker.service import Service

F = TypeVar("F", bound=HandlerFunc)


class Conveyor(Client, AsyncClient):
    """A Conveyor application: durable background jobs in one PostgreSQL schema.

    ``dsn`` defaults to ``CONVEYOR_DATABASE_URL``, then ``DATABASE_URL`` (read on first use).
    The job defaults given here (``priority``, ``retry_limit``, ``retry_delay``, ``retry_backoff``,
    ``retry_delay_max``, ``expire_in``, ``retention``) apply where neither the job nor its queue
    sets one. Finished jobs are deleted once their ``retention`` ran out, dead letters (failed
    jobs) after ``dead_retention`` (default 14 days), by the workers' maintenance or
    :meth:`maintain`. Every I/O method exists twice: ``send`` and ``send_async``, and so on.

    ``read_dsn`` (else ``CONVEYOR_READ_DATABASE_URL``) names a streaming standby of the
    database: the inspection reads (``get_job``, ``list_jobs``, ``queue_stats``, the other
    ``get_*`` and ``list_*`` methods, the dashboard and ``/metrics``) go there and may lag
    behind by the replay delay; writes, ``wait_for``, the job ids a send answers with (unique
    and singleton keys included) and the workers stay on the primary.
    ``tracer_provider`` (an OpenTelemetry ``TracerProvider``, with the ``otel`` extra) receives
    the spans of sends and attempts; by default the global provider does, once one is set
    (see :mod:`conveyor.telemetry`).
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str = DEFAULT_SCHEMA,
        max_payload_bytes: int = DEFAULT_PAYLOAD_LIMIT,
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        clock: Clock = database_clock,
        dead_retention: float | timedelta = DEFAULT_DEAD_RETENTION,
        listen_dsn: str | None = None,
        pgbouncer: bool = False,
        tracer_provider: Any = None,
        read_dsn: str | None = None,
        **defaults: Any,
    ) -> None:
        for name, value in (("listen_dsn", listen_dsn), ("read_dsn", read_dsn)):
            if value is not None and not isinstance(value, str):
                raise InvalidOption(f"{name} must be a connection string")
        if not isinstance(pgbouncer, bool):
            raise InvalidOption("pgbouncer must be True or False")
        if tracer_provider is not None and not hasattr(tracer_provider, "get_tracer"):
            raise InvalidOption("tracer_provider must be an OpenTelemetry TracerProvider")
        self._settings = Settings(
            dsn=dsn,
            listen_dsn=listen_dsn,
            read_dsn=read_dsn,
            pgbouncer=pgbouncer,
            schema=check_schema_name(schema),
            defaults=check_defaultable(_known_defaults(defaults)),
            max_payload_bytes=check_int("max_payload_bytes", max_payload_bytes, 1, 256 * 2**20),
            pool_min_size=check_int("pool_min_size", pool_min_size, 0, 1000),
            pool_max_size=check_int("pool_max_size", pool_max_size, 1, 1000),
            clock=clock,
            dead_retention=check_seconds("dead_retention", dead_retention, allow_zero=False),
            tracer_provider=tracer_provider,
        )
        self._stores = Stores(self._settings)
        self._registry = Registry()
        self._declared_schedules: dict[str, dict[str, Any]] = {}
        self._events = Events()

    @property
    def schema(self) -> str:
        """The PostgreSQL schema that holds this app's tables."""
        return self._settings.schema

    @property
    def settings(self) -> Settings:
        """The app's configuration."""
        return self._settings

    def use_database(self, dsn: str | None = None, schema: str | None = None) -> None:
        """Point the app at another database and/or schema before it is first used (the CLI's
        global ``--dsn`` and ``--schema`` applied to an app it loads); its handlers stay.

        A new ``dsn`` drops the app's ``read_dsn``: a standby of the old database is no
        replica of the new one."""
        self._stores.close()
        self._settings = dataclasses.replace(
            self._settings,
            dsn=dsn or self._settings.dsn,
            read_dsn=None if dsn else self._settings.read_dsn,
            schema=check_schema_name(schema) if schema else self._settings.schema,
        )
        self._stores = Stores(self._settings)

    # -- handlers and events ---------------------------------------------------------------

    def job(
        self,
        queue: str,
        func: HandlerFunc | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        **defaults: Any,
    ) -> Callable[[F], F]:
        """Register the handler of ``queue``: ``@app.job("email.send", retry_limit=5)``, or
        ``app.job("email.send", send_email)`` as a plain call.

        The handler takes a :class:`~conveyor.Job` and may be ``def`` or ``async def``; its return
        value (JSON) becomes the job's result. ``defaults`` are job options applied to every job
        this app sends to the queue, and written as the queue's defaults when a worker starts,
        so jobs sent from SQL get them too. ``retry_policy(attempt, error)`` may return the
        seconds before the next attempt, or None to fail at once.
        """

        def register(handler: F) -> F:
            self._registry.register(queue, handler, retry_policy=retry_policy, **defaults)
            return handler

        if func is not None:
            register(func)
        return register

    def on(self, event: str) -> Callable[[Listener], Listener]:
        """Subscribe to a lifecycle event: ``job.started``, ``job.completed``,
        ``job.attempt_failed`` (one attempt), ``job.retried``, ``job.snoozed``, ``job.failed``
        (the last attempt failed: the job is in the dead letters; ``job.dead`` is a synonym),
        ``worker.error``."""
        return self._events.on(event)

    # -- workers -----------------------------------------------------------------------------

    async def run_worker_async(
        self,
        queues: Sequence[str] | None = None,
        concurrency: int = 10,
        *,
        prefetch: int | None = None,
        shutdown_timeout: float = 30.0,
        poll_interval: float = 2.0,
        heartbeat_interval: float | None = None,
        stale_after: float = 30.0,
        recover_interval: float = 5.0,
        stop: asyncio.Event | None = None,
        install_signal_handlers: bool = False,
        burst: bool = False,
        migrate: bool = False,
    ) -> int:
        """Run a worker in the current event loop until ``stop`` is set (or, with ``burst``,
        until no job is due); return how many attempts it ran.

        ``queues`` defaults to every queue with a handler. ``concurrency`` attempts run at once;
        ``prefetch`` more jobs are claimed ahead into a local queue, so fetches come in batches.
        By default it adapts: only as many as the slots should finish within 0.1 s at the recent
        average job time (none for slow jobs, up to 400 for very quick ones). Set 0 to claim
        only for free slots.
        On stop, fetching ends and in-flight jobs get ``shutdown_timeout`` seconds to finish; the
        rest are handed back without spending an attempt. Jobs of a worker whose heartbeat is
        older than ``stale_after`` seconds are recovered by the leader within
        ``stale_after + 1.5 * recover_interval`` seconds, even when the dead worker held the
        leader lease. The worker heartbeats every ``heartbeat_interval`` seconds: by default
        ``stale_after / 3``, at most 5; a value above ``stale_after / 2`` is refused
        (:class:`~conveyor.errors.InvalidOption`), since a healthy worker would then be taken
        for dead after one late heartbeat. With ``install_signal_handlers``, SIGTERM
        and SIGINT stop the worker gracefully and a second signal stops it at once.

        The worker refuses to start on a schema that is behind this release
        (:class:`~conveyor.SchemaOutOfDate`) unless ``migrate`` is set, and on one that a newer
        release migrated further (:class:`~conveyor.errors.SchemaTooNew`).
        """
        if migrate:
            await self.migrate_async()
        await self._stores.migrator_async().ensure_current()
        # Schedules declared in code are written again, so they exist after a schema reset.
        for values in list(self._declared_schedules.values()):
            await self._stores.store_async().schedule_upsert(values)
        served = tuple(queues) if queues is not None else tuple(self._registry.queues())
        options = WorkerOptions(
            queues=served,
            concurrency=check_int("concurrency", concurrency, 1, 10_000),
            prefetch=None if prefetch is None else check_int("prefetch", prefetch, 0, 10_000),
            shutdown_timeout=check_seconds("shutdown_timeout", shutdown_timeout, allow_zero=True),
            poll_interval=check_seconds("poll_interval", poll_interval, allow_zero=False),
            heartbeat_interval=heartbeat_for(stale_after, heartbeat_interval),
            stale_after=check_seconds("stale_after", stale_after, allow_zero=False),
            burst=burst,
            max_payload_bytes=self._settings.max_payload_bytes,
        )
        for queue in served:
            policy = {
                k: v for k, v in self._registry.defaults_for(queue).items() if k in QUEUE_OPTIONS
            }
            if policy:
                await self.create_queue_async(queue, **policy)
        services: list[Service] = (
            []
            if burst
            else [
                Maintenance(
                    stale_after=stale_after,
                    interval=check_seconds("recover_interval", recover_interval, allow_zero=False),
                    dead_retention=self._settings.dead_retention,
                    default_retention=self._settings.defaults.get("retention", DEFAULT_RETENTION),
                ),
                Scheduler(),
                StatsRollup(),
            ]
        )
        # Before the worker is built: it asks which events have listeners.
        logs.install_job_logging(self._events)
        worker = Worker(
            dsn=self._stores.dsn,
            listen_dsn=self._stores.listen_dsn,
            pgbouncer=self._settings.pgbouncer,
            schema=self.schema,
            registry=self._registry,
            events=self._events,
            services=services,
            options=options,
            clock=self._settings.clock,
            tracer_provider=self._settings.tracer_provider,
        )
        logs.log_worker_started(worker.id, options, schema=self.schema, dsn=self._stores.dsn)
        error: Exception | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                if install_signal_handlers:
                    stack.enter_context(signals.graceful(worker.stop, worker.stop_now))
                if stop is not None:
                    watcher = asyncio.create_task(_stop_when(stop, worker.stop))
                    stack.callback(watcher.cancel)
                return await worker.run()
        except Exception as exc:
            error = exc
            raise
        finally:
            logs.log_worker_stopped(worker.id, worker.jobs_run, error)

    def run_worker(
        self,
        queues: Sequence[str] | None = None,
        concurrency: int = 10,
        *,
        prefetch: int | None = None,
        shutdown_timeout: float = 30.0,
        poll_interval: float = 2.0,
        heartbeat_interval: float | None = None,
        stale_after: float = 30.0,
        recover_interval: float = 5.0,
        install_signal_handlers: bool = True,
        burst: bool = False,
        migrate: bool = False,
    ) -> int:
        """Run a worker until SIGTERM/SIGINT (blocking); see :meth:`run_worker_async`.

        The worker is asyncio inside: this starts an event loop, so call it from plain code,
        not from a running loop (there, await :meth:`run_worker_async`).
        """

        async def serve() -> int:
            try:
                return await self.run_worker_async(
                    queues,
                    concurrency,
                    prefetch=prefetch,
                    shutdown_timeout=shutdown_timeout,
                    poll_interval=poll_interval,
                    heartbeat_interval=heartbeat_interval,
                    stale_after=stale_after,
                    recover_interval=recover_interval,
                    install_signal_handlers=install_signal_handlers,
                    burst=burst,
                    migrate=migrate,
                )
            finally:
                await self._stores.discard_async()

        return _run(serve())

    async def drain_async(
        self,
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        *,
        prefetch: int | None = None,
    ) -> int:
        """Run every job that is due now (and retries that fall due meanwhile), then return how
        many attempts ran; for tests. Jobs scheduled later stay queued: move the app's clock."""
        return await self.run_worker_async(queues, concurrency, prefetch=prefetch, burst=True)

    def drain(
        self,
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        *,
        prefetch: int | None = None,
    ) -> int:
        """Run every job that is due now, inline, then return; see :meth:`drain_async`."""
        return self.run_worker(queues, concurrency, prefetch=prefetch, burst=True)

    def __repr__(self) -> str:
        return f"Conveyor(schema={self.schema!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close_async()


async def _stop_when(event: asyncio.Event, stop: Callable[[], None]) -> None:
    await event.wait()
    stop()


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run a coroutine in a new event loop, refusing politely inside a running one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise ConfigurationError(
            "an event loop is already running here: await the *_async method instead"
        )
    # Outside the except block: run inside it, every exception raised by the worker or by a
    # handler would carry the "no running event loop" RuntimeError as its context.
    return asyncio.run(coro)


def heartbeat_for(stale_after: float, heartbeat_interval: float | None) -> float:
    """The heartbeat interval of a worker whose jobs are recovered after ``stale_after``
    seconds of silence: ``heartbeat_interval`` if it leaves room for a late beat, else
    :class:`InvalidOption`; by default a third of ``stale_after``, at most 5 seconds."""
    stale_after = check_seconds("stale_after", stale_after, allow_zero=False)
    if heartbeat_interval is None:
        return min(5.0, stale_after / 3)
    beat = check_seconds("heartbeat_interval", heartbeat_interval, allow_zero=False)
    if beat > stale_after / 2:
        raise InvalidOption(
            f"heartbeat_interval ({beat:g} s) must be at most half of stale_after "
            f"({stale_after:g} s), or healthy workers are taken for dead and their jobs run "
            "twice; leave heartbeat_interval unset to derive it from stale_after"
        )
    return beat


def _known_defaults(defaults: dict[str, Any]) -> dict[str, Any]:
    for name in defaults:
        if name not in DEFAULTABLE:
            raise UnknownOption(
                f"unknown Conveyor option {name!r}; job defaults are {', '.join(DEFAULTABLE)}"
            )
    return defaults
