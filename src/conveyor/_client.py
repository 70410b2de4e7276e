# Generated from src/conveyor/_client_async.py
# by tools/async_to_sync.py: edit that file, not this one.
"""The public I/O API of :class:`~conveyor.Conveyor`: the ``*_async`` methods.

``_client.py`` is generated from this file by ``tools/async_to_sync.py``; edit this one. Pure work
(validation, folding a batch, shaping results) lives in modules both sides import, so the two files
hold only the I/O sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, overload
from uuid import UUID

from conveyor import batching, bulk, diagnosis, reporting, telemetry
from conveyor._store.migrations import MigrationStatus, pending_sql
from conveyor._store.store import Conn, Store
from conveyor._store.stores import Stores
from conveyor.config import (
    DEFAULT_RETENTION,
    SCHEDULE_TICK_KEEP,
    STATS_SERIES_MAX_MINUTES,
    VACUUM_DEAD_SHARE,
    VACUUM_MIN_DEAD,
    Settings,
)
from conveyor.cron import parse_crontab
from conveyor.errors import (
    ConveyorError,
    DatabaseUnavailable,
    InvalidOption,
    JobNotFound,
    JobStateError,
    MigrationChecksumMismatch,
    QueueNotFound,
    ScheduleNotFound,
    WaitTimeout,
)
from conveyor.events import Event, Events
from conveyor.flows import FlowNode, flatten
from conveyor.handlers import Registry
from conveyor.models import (
    BulkResult,
    Finding,
    Health,
    Job,
    JobState,
    Queue,
    QueueStats,
    Schedule,
    StatsMinute,
    WorkerInfo,
)
from conveyor.options import (
    BareJobs,
    JobSpec,
    bare_jobs,
    check_int,
    check_job_id,
    check_queue_name,
    check_seconds,
    job_spec,
    list_filters,
    queue_policy,
    schedule_values,
    sql_send_options,
)

# A job in send_batch: (queue, data) or (queue, data, options).
BatchItem = tuple[str, Any] | tuple[str, Any, Mapping[str, Any]]
# Rounds of re-asking for a job whose key holder committed after the insert's snapshot.
KEY_RESOLVE_ROUNDS = 5
CANCELLED = "job.cancelled"
# Where a bulk action's walk over job ids starts: below every id.
FIRST_ID = UUID(int=0)


class Client:
    """Enqueue, inspect and manage jobs and queues, asynchronously.

    The inspection reads (``get_job``, ``list_jobs``, ``list_dead``, ``list_workers``,
    ``get_queue``, ``list_queues``, ``queue_stats``, ``get_schedule``, ``list_schedules``,
    ``list_subscriptions``) go to the app's ``read_dsn`` when it has one; everything else,
    and whatever must be current (``wait_for``, the answers of writes), goes to the primary.
    """

    _settings: Settings
    _stores: Stores
    _events: Events
    _registry: Registry
    _declared_schedules: dict[str, dict[str, Any]]

    def send(
        self,
        queue: str,
        data: Any = None,
        *,
        connection: Conn | None = None,
        **options: Any,
    ) -> UUID:
        """Enqueue one job and return its id.

        With ``unique_key`` (or ``singleton_key`` + ``singleton_seconds``) the id may be that of the
        job already holding the key. With ``connection=``, the job is written inside that
        connection's open transaction and exists only if the caller commits.
        """
        return (self.send_batch([(queue, data, options)], connection=connection))[0]

    def send_batch(
        self, jobs: Iterable[BatchItem], *, connection: Conn | None = None
    ) -> list[UUID]:
        """Enqueue many jobs in one round trip; return their ids in the order given.

        Every job is validated before anything is written: one bad job refuses the whole batch.
        """
        settings = self._settings
        registry = self._registry
        items: list[BatchItem] = list(jobs)
        if not items:
            return []
        bare = bare_jobs(items, registry.defaults_for, settings.max_payload_bytes)
        if bare is not None:
            return self._insert_bare(bare, connection)
        specs = [
            job_spec(
                item[0],
                item[1],
                {**registry.defaults_for(item[0]), **(item[2] if len(item) > 2 else {})},
                settings.max_payload_bytes,
            )
            for item in items
        ]
        return self._insert(specs, connection)

    def _insert_bare(self, bare: BareJobs, connection: Conn | None) -> list[UUID]:
        """Jobs that set no option: straight to the fast path, as columns, unless the send is
        traced (its trace context goes into the jobs' meta) or a queue of theirs needs the
        general path."""
        settings = self._settings
        if not telemetry.traced(settings.tracer_provider):
            store = self._stores.store()
            if store.job_insert_bare(
                bare.ids, bare.queues, bare.data, settings.defaults, settings.clock(), connection
            ):
                return bare.ids
            return self._insert(bare.specs(), connection, plain=False)
        return self._insert(bare.specs(), connection)

    def _insert(
        self, specs: list[JobSpec], connection: Conn | None, *, plain: bool = True
    ) -> list[UUID]:
        if not specs:
            return []
        traced = telemetry.sending(specs, self._settings.tracer_provider)
        if traced is None:
            return self._insert_rounds(specs, connection, None, plain)
        with traced as meta:  # a producer span, whose trace context the jobs carry
            return self._insert_rounds(specs, connection, meta, plain)

    def _insert_rounds(
        self, specs: list[JobSpec], connection: Conn | None, meta: str | None, plain: bool
    ) -> list[UUID]:
        """Insert the jobs: by the fast path when they all may take it (and ``plain``: it was
        not just refused), else by insert_jobs, asking again for jobs whose key holder was not
        yet visible."""
        settings = self._settings
        store = self._stores.store()
        if (
            plain
            and all(s.plain for s in specs)
            and store.job_insert_plain(specs, settings.defaults, settings.clock(), connection, meta)
        ):
            return [s.id for s in specs]
        rows, where = batching.fold(specs)
        resolved: list[UUID | None] = [None] * len(rows)
        todo = list(range(len(rows)))
        for _ in range(KEY_RESOLVE_ROUNDS):
            found = store.job_insert_many(
                [rows[i] for i in todo], settings.defaults, settings.clock(), connection, meta
            )
            for i, (job_id, _inserted) in zip(todo, found, strict=True):
                resolved[i] = job_id
            todo = [i for i in todo if resolved[i] is None]
            if not todo:
                return [resolved[i] for i in where]  # type: ignore[misc]
        raise ConveyorError("could not resolve the job holding a unique or singleton key")

    def flow(
        self,
        parent: FlowNode,
        children: Iterable[FlowNode] = (),
        *,
        connection: Conn | None = None,
    ) -> UUID:
        """Send a parent job and its children (nested to any depth) in one round trip and one
        transaction; return the parent's id.

        Each node is ``(queue, data)``, ``(queue, data, options)`` or a mapping with ``queue``,
        ``data``, ``options`` and ``children``. A parent waits (state ``waiting``) until all its
        children finished, then runs once and reads their results in ``job.results``; if a child
        fails or is cancelled, the parent fails too, unless its options say
        ``on_dependency_failure="run"``. ``get_job(parent).depends_on`` lists the children.
        """
        settings = self._settings
        registry = self._registry
        specs = flatten(
            parent,
            children,
            lambda queue, data, options: job_spec(
                queue,
                data,
                {**registry.defaults_for(queue), **options},
                settings.max_payload_bytes,
            ),
        )
        return (self._insert(specs, connection))[-1]

    def publish(
        self,
        event: str,
        data: Any = None,
        *,
        connection: Conn | None = None,
        **options: Any,
    ) -> list[UUID]:
        """Send one job with ``data`` to every queue subscribed to ``event``, in one statement
        (inside ``connection``'s transaction when given); return their ids, ordered by queue
        name. Jobs take the job ``options`` given here, then each queue's defaults.
        """
        check_queue_name(event, "event name")
        limit = self._settings.max_payload_bytes
        spec = job_spec(event, data, options, limit)
        store = self._stores.store()
        return store.job_publish(event, spec.data, sql_send_options(spec), connection)

    def subscribe(self, event: str, queue: str, *, connection: Conn | None = None) -> bool:
        """Make ``publish(event, ...)`` send a job to ``queue`` from now on; stored in the
        database, so every process sees it. False if the queue was already subscribed."""
        check_queue_name(event, "event name")
        check_queue_name(queue)
        return self._stores.store().subscription_add(event, queue, connection)

    def unsubscribe(
        self, event: str, queue: str | None = None, *, connection: Conn | None = None
    ) -> int:
        """Stop sending ``event`` to ``queue`` (None: to every queue); how many subscriptions
        ended."""
        check_queue_name(event, "event name")
        if queue is not None:
            check_queue_name(queue)
        return self._stores.store().subscription_remove(event, queue, connection)

    def list_subscriptions(self, event: str | None = None) -> list[tuple[str, str]]:
        """The subscriptions as (event, queue) pairs, of one event or all."""
        if event is not None:
            check_queue_name(event, "event name")
        return self._stores.reader().subscription_list(event)

    def get_job(self, job_id: UUID | str, *, connection: Conn | None = None) -> Job:
        """The job with this id, queued, running or finished; :class:`JobNotFound` if none.

        An inspection read: on the app's ``read_dsn`` (a standby, which may lag) when it has
        one, unless ``connection`` is given."""
        return self._job(self._stores.reader(connection), job_id, connection)

    def _job(self, store: Store, job_id: UUID | str, connection: Conn | None) -> Job:
        job = store.job_get(check_job_id(job_id), connection)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        if job.depends_on:
            return replace(job, results=store.job_results(job.depends_on, connection))
        return job

    def _current_job(self, job_id: UUID | str, connection: Conn | None) -> Job:
        """The job as the primary has it now: what explains a refused write must be current."""
        return self._job(self._stores.store(), job_id, connection)

    def get_jobs(self, job_ids: Iterable[UUID | str]) -> list[Job]:
        """The jobs with these ids, queued, running or finished, in the order given; an id
        that names no job is left out (at most 10,000 ids)."""
        ids = [check_job_id(i) for i in job_ids]
        if len(ids) > 10_000:
            raise InvalidOption("get_jobs reads at most 10000 ids at once")
        return self._stores.reader().job_get_many(ids) if ids else []

    def list_dependants(self, job_id: UUID | str, *, limit: int = 100) -> list[Job]:
        """The jobs that depend on this one (``depends_on`` names it: a flow's parent is one),
        queued, running or finished, oldest first."""
        limit = check_int("limit", limit, 1, 10_000)
        return self._stores.reader().job_dependants(check_job_id(job_id), limit)

    def get_flow(self, job_id: UUID | str, *, limit: int = 500) -> list[Job]:
        """Every job of the flow this job belongs to: the top of the flow first (the job's
        oldest dependant, followed up), then each job below it through ``depends_on``, level by
        level; at most ``limit`` jobs. A job outside any flow gives a list of itself alone;
        :class:`JobNotFound` if no job has this id."""
        limit = check_int("limit", limit, 1, 10_000)
        found = self._stores.reader().job_flow(check_job_id(job_id), limit)
        if not found:
            raise JobNotFound(f"no job with id {job_id}")
        return found

    def list_jobs(
        self,
        queue: str | None = None,
        state: str | Iterable[str] | None = None,
        *,
        since: datetime | timedelta | float | None = None,
        search: str | None = None,
        limit: int = 100,
        offset: int = 0,
        order: str = "desc",
        after: Job | tuple[datetime, UUID | str] | str | None = None,
        connection: Conn | None = None,
    ) -> list[Job]:
        """Jobs filtered by queue and state(s), newest first (``order="asc"``: oldest first).

        ``since``: only jobs created at or after it (an aware datetime, or a timedelta or
        seconds before now). Finished jobs created more than a day ago are listed only when
        ``since`` reaches back to them: the history is read by its index from a bounded
        window. ``search``: only jobs whose payload (as JSON text) or id contains this text,
        ignoring case; ``%`` and ``_`` are matched literally. ``after``: the last job of the
        previous page (or its ``(created_at, id)``), for pages that stay put while jobs come
        and go, unlike ``offset``.
        """
        filters = list_filters(queue, state, limit, offset, order, since, search, after)
        store = self._stores.reader(connection)
        return store.job_list(**filters, now=self._settings.clock(), conn=connection)

    def delete_job(self, job_id: UUID | str, *, connection: Conn | None = None) -> None:
        """Delete a queued, finished or dead job for good. A running job raises
        :class:`JobStateError` (cancel it first); an unknown id raises :class:`JobNotFound`."""
        store = self._stores.store()
        if store.job_delete(check_job_id(job_id), connection):
            return
        job = self._current_job(job_id, connection)
        raise JobStateError(f"job {job_id} is {job.state}: cancel a running job before deleting it")

    def list_dead(
        self, queue: str | None = None, *, limit: int = 100, offset: int = 0
    ) -> list[Job]:
        """The dead letters (failed jobs, with their error history), newest first."""
        if queue is not None:
            check_queue_name(queue)
        limit = check_int("limit", limit, 1, 10_000)
        offset = check_int("offset", offset, 0, 2**31 - 1)
        return self._stores.reader().job_list_dead(queue, limit, offset)

    def purge_dead(
        self, queue: str | None = None, *, older_than: float | timedelta | None = None
    ) -> int:
        """Delete the dead letters (of ``queue``; with ``older_than``, only those that failed
        more than that many seconds ago); return how many."""
        if queue is not None:
            check_queue_name(queue)
        seconds = (
            None if older_than is None else check_seconds("older_than", older_than, allow_zero=True)
        )
        store = self._stores.store()
        return store.job_purge_dead(queue, seconds, self._settings.clock())

    def list_workers(self) -> list[WorkerInfo]:
        """The registered workers with their queues and last heartbeat, oldest first. A worker
        whose heartbeat is older than the recovery threshold is presumed dead."""
        return self._stores.reader().worker_list()

    def cancel(self, job_id: UUID | str, *, connection: Conn | None = None) -> Job:
        """Cancel a queued or running job (a running handler is told at once).

        Cancelling a cancelled job returns it unchanged; a completed or failed job raises
        :class:`JobStateError`.
        """
        store = self._stores.store()
        job = store.job_cancel(check_job_id(job_id), self._settings.clock(), connection)
        if job is not None:
            # A job a worker held is reported by that worker; a caller's transaction may still
            # roll back.
            if connection is None and job.worker_id is None and self._events.wanted(CANCELLED):
                self._events.emit(Event(CANCELLED, None, job))
            return job
        job = self._current_job(job_id, connection)
        if job.state is JobState.CANCELLED:
            return job
        raise JobStateError(
            f"job {job_id} is {job.state}: only queued or running jobs can be cancelled"
        )

    def retry(self, job_id: UUID | str, *, connection: Conn | None = None) -> Job:
        """Run a job again now: a queued job is brought forward; a failed or cancelled job is
        queued again with a fresh attempt count (its error history kept).

        Raises :class:`JobStateError` for a running or completed job.
        """
        store = self._stores.store()
        job = store.job_retry(check_job_id(job_id), self._settings.clock(), False, connection)
        if job is not None:
            return job
        job = self._current_job(job_id, connection)
        raise JobStateError(
            f"job {job_id} is {job.state}: only queued, failed or cancelled jobs can be retried"
        )

    def retry_dead(self, job_id: UUID | str, *, connection: Conn | None = None) -> Job:
        """Take a job out of the dead letters and queue it again with a fresh attempt count
        (its error history kept). Raises :class:`JobStateError` if the job is not failed."""
        store = self._stores.store()
        job = store.job_retry(check_job_id(job_id), self._settings.clock(), True, connection)
        if job is not None:
            return job
        job = self._current_job(job_id, connection)
        raise JobStateError(f"job {job_id} is {job.state}, not in the dead letters")

    def retry_dead_all(self, queue: str, *, connection: Conn | None = None) -> int:
        """Queue every dead letter of ``queue`` again, each with a fresh attempt count; how many."""
        check_queue_name(queue)
        store = self._stores.store()
        return store.job_retry_dead_all(queue, self._settings.clock(), connection)

    def bulk_jobs(
        self,
        action: str,
        *,
        queue: str | None = None,
        state: str | Iterable[str] | None = None,
        older_than: float | timedelta | None = None,
        search: str | None = None,
        group_key: str | None = None,
        priority: int | None = None,
        dry_run: bool = False,
        batch_size: int = bulk.DEFAULT_BATCH_SIZE,
        progress: Callable[[int], None] | None = None,
    ) -> BulkResult:
        """Cancel, retry, delete or re-prioritise every job a filter matches.

        ``action``: ``"cancel"`` (queued, waiting or running jobs; running handlers are told at
        once), ``"retry"`` (queued jobs are brought forward, failed or cancelled ones queued
        again with a fresh attempt count), ``"delete"`` (any job but a running one) or
        ``"reprioritize"`` (queued or waiting jobs get ``priority``). The filter: ``queue``,
        ``state`` (one or several of those the action applies to; default all of them),
        ``older_than`` (created more than that many seconds ago), ``search`` (text in the
        payload's JSON or the id, ignoring case, as ``list_jobs``) and ``group_key``; at least
        one of them is required.

        The jobs are counted first (``dry_run=True`` stops there), then changed in batches of
        ``batch_size`` in a transaction each, skipping rows another transaction holds, so no
        lock is held for long. ``progress`` is called after each batch with the running total.
        """
        found = bulk.bulk_filter(
            action, queue=queue, state=state, older_than=older_than, search=search,
            group_key=group_key,
        )  # fmt: skip
        if action == "reprioritize":
            priority = bulk.check_priority(priority)
        elif priority is not None:
            raise InvalidOption("priority applies to the reprioritize action only")
        if not isinstance(dry_run, bool):
            raise InvalidOption("dry_run must be true or false")
        batch_size = bulk.check_batch_size(batch_size)
        store = self._stores.store()
        now = self._settings.clock()
        matched, before = store.job_bulk_count(found, now)
        if dry_run or not matched:
            return BulkResult(action, dry_run, matched, 0)
        affected = 0
        for name, states in bulk.steps(action, found):
            after: UUID | None = FIRST_ID
            while after is not None:
                changed, after = store.job_bulk_step(
                    name, found, states, before=before, after=after, limit=batch_size,
                    priority=priority, now=now,
                )  # fmt: skip
                affected += changed
                if progress is not None and after is not None:
                    progress(affected)
        return BulkResult(action, False, matched, affected)

    def pause_queue(self, name: str) -> Queue:
        """Stop starting the jobs of a queue, on every worker at once, until it is resumed
        (the pause is stored in the database, so it survives restarts). Sends are still
        accepted; jobs already running finish, and so do the few a worker had claimed ahead of
        its free slots (its prefetch). Pausing a paused queue changes nothing;
        :class:`QueueNotFound` if there is no such queue."""
        check_queue_name(name)
        if not self._stores.store().queue_pause(name):
            raise QueueNotFound(f"no queue named {name!r}")
        return self._queue(self._stores.store(), name)

    def resume_queue(self, name: str) -> Queue:
        """Run a paused queue's jobs again; its idle workers are woken at once. Resuming a
        queue that is not paused changes nothing; :class:`QueueNotFound` if there is none."""
        check_queue_name(name)
        if not self._stores.store().queue_resume(name):
            raise QueueNotFound(f"no queue named {name!r}")
        return self._queue(self._stores.store(), name)

    def wait_for(self, job_id: UUID | str, timeout: float = 60.0) -> Job:
        """Wait until the job is completed, failed or cancelled and return it (``.result``,
        ``.error``). Woken by NOTIFY, not by polling; raises :class:`WaitTimeout` after
        ``timeout`` seconds (the job itself goes on)."""
        check_seconds("timeout", timeout, allow_zero=True)
        job = self._stores.store().job_wait(check_job_id(job_id), timeout)
        if job is None:
            raise JobNotFound(f"no job with id {job_id}")
        if not job.state.is_terminal:
            raise WaitTimeout(f"job {job_id} is still {job.state} after {timeout:g}s")
        return job

    def create_queue(self, name: str, **policy: Any) -> Queue:
        """Create a queue with a policy and defaults, or set them on an existing queue.

        Options: ``policy`` (standard, short, singleton, stately), ``priority``, ``retry_limit``,
        ``retry_delay``, ``retry_backoff``, ``retry_delay_max``, ``expire_in``, ``retention``,
        ``dead_letter``, ``concurrency``, ``rate_limit`` (``n`` per second or ``(n, seconds)``),
        ``fair`` (claim its jobs by turns across their ``fair_key`` values; see
        docs/howto/fair-share.md).
        """
        check_queue_name(name)
        values = queue_policy(policy, partial=False)
        queue = self._stores.store().queue_upsert(name, values, True)
        assert queue is not None  # create=True always returns the row
        return queue

    def update_queue(self, name: str, **policy: Any) -> Queue:
        """Change some of a queue's policy; ``None`` clears a field back to the app default."""
        check_queue_name(name)
        values = queue_policy(policy, partial=True)
        queue = self._stores.store().queue_upsert(name, values, False)
        if queue is None:
            raise QueueNotFound(f"no queue named {name!r}")
        return queue

    def delete_queue(self, name: str) -> int:
        """Delete a queue and every job it holds, live or finished; return how many jobs."""
        check_queue_name(name)
        queues, jobs = self._stores.store().queue_delete(name)
        if not queues:
            raise QueueNotFound(f"no queue named {name!r}")
        return jobs

    def purge_queue(self, name: str) -> int:
        """Delete the queued jobs of a queue (running and finished ones stay); return how many."""
        store = self._stores.store()
        self._queue(store, name)
        return store.queue_purge(name)

    def get_queue(self, name: str) -> Queue:
        """The queue of this name; :class:`QueueNotFound` if none."""
        return self._queue(self._stores.reader(), name)

    def _queue(self, store: Store, name: str) -> Queue:
        check_queue_name(name)
        queue = store.queue_get(name)
        if queue is None:
            raise QueueNotFound(f"no queue named {name!r}")
        return queue

    def list_queues(self) -> list[Queue]:
        """Every queue, by name (queues are created on first send or by ``create_queue``)."""
        return self._stores.reader().queue_list()

    @overload
    def queue_stats(self, name: str) -> QueueStats: ...

    @overload
    def queue_stats(self, name: None = None) -> list[QueueStats]: ...

    def queue_stats(self, name: str | None = None) -> QueueStats | list[QueueStats]:
        """Counts by state and the oldest runnable job's wait, for one queue or for all.

        Queued and running jobs are those in the live table now; ``failed`` counts the dead
        letters held now; ``completed`` and ``cancelled`` count every job of the queue that
        reached that state since the counters began (the history present when they were
        first built included), whether or not the history still holds it. Read from counters
        a worker keeps and the jobs finished since its last pass, never from a scan of the
        history.
        """
        if name is not None:
            check_queue_name(name)
        found = self._stores.reader().queue_stats(name, self._settings.clock())
        stats = reporting.queue_stats(found)
        if name is None:
            return stats
        if not stats:
            raise QueueNotFound(f"no queue named {name!r}")
        return stats[0]

    def queue_series(self, name: str | None = None, *, minutes: int = 60) -> list[StatsMinute]:
        """What happened per minute over the last ``minutes`` minutes (at most 1440, the current
        minute included, oldest first), in one queue (:class:`QueueNotFound` if there is none)
        or, without a name, in all of them summed: jobs completed, failed, cancelled and
        retried, the wait before their last attempt (p50 and p95) and the backlog. Read from
        counters a worker keeps, never from a scan of the history; see
        :class:`~conveyor.models.StatsMinute`."""
        minutes = check_int("minutes", minutes, 1, STATS_SERIES_MAX_MINUTES)
        store = self._stores.reader()
        if name is not None:
            self.get_queue(name)
        return store.stats_series(name, minutes, self._settings.clock())

    def schedule(
        self,
        name: str,
        cron: str | None = None,
        *,
        every: float | timedelta | None = None,
        queue: str | None = None,
        data: Any = None,
        tz: str = "UTC",
        missed: str = "skip",
        backfill_limit: int = 10,
        **options: Any,
    ) -> Schedule:
        """Create or replace a recurring job: at every tick of ``cron`` (five fields, or six
        with seconds last, evaluated in ``tz``) or every ``every`` seconds, one job is sent to
        ``queue`` (default: the schedule's name) with ``data`` and the job ``options``.

        Each tick sends exactly one job however many workers run (the leader fires them).
        Ticks missed while no worker ran: ``missed="skip"`` sends only the newest,
        ``"backfill"`` up to ``backfill_limit`` of the newest.
        """
        values = schedule_values(
            name, cron, every, queue, data, tz, missed, backfill_limit, options,
            self._settings.max_payload_bytes,
        )  # fmt: skip
        found = self._stores.store().schedule_upsert(values)
        self._declared_schedules[name] = values
        return found

    def schedule_crontab(self, text: str, *, prune: bool = False) -> list[Schedule]:
        """Create or replace the schedules of a crontab text, one per line::

            0 9 10 * * bills.monthly ?tz=Asia/Ulaanbaatar
            */15 * * * * reports.refresh {"full": false} ?name=refresh&priority=3

        Five cron fields (or six, seconds last), the queue, optional JSON data, and after the
        last `` ?`` settings: ``tz``, ``name`` (default: the queue), ``missed``,
        ``backfill_limit`` and any job option. Every line is checked before anything is written.
        With ``prune``, schedules that the text does not name are removed.
        """
        limit = self._settings.max_payload_bytes
        wanted = [
            schedule_values(
                e.name,
                e.cron,
                None,
                e.queue,
                e.data,
                e.settings.get("tz", "UTC"),
                e.settings.get("missed", "skip"),
                e.settings.get("backfill_limit", 10),
                e.options,
                limit,
            )
            for e in parse_crontab(text)
        ]
        store = self._stores.store()
        made = []
        for values in wanted:
            made.append(store.schedule_upsert(values))
            self._declared_schedules[values["name"]] = values
        if prune:
            keep = {v["name"] for v in wanted}
            for existing in store.schedule_list():
                if existing.name not in keep:
                    store.schedule_delete(existing.name)
                    self._declared_schedules.pop(existing.name, None)
        return made

    def unschedule(self, name: str) -> bool:
        """Remove a schedule; jobs it already sent stay. False if there was none."""
        check_queue_name(name, "schedule name")
        self._declared_schedules.pop(name, None)
        return self._stores.store().schedule_delete(name)

    def get_schedule(self, name: str) -> Schedule:
        """The schedule of this name; :class:`ScheduleNotFound` if none."""
        check_queue_name(name, "schedule name")
        found = self._stores.reader().schedule_get(name)
        if found is None:
            raise ScheduleNotFound(f"no schedule named {name!r}")
        return found

    def list_schedules(self) -> list[Schedule]:
        """Every schedule, by name."""
        return self._stores.reader().schedule_list()

    def migrate(self) -> list[str]:
        """Apply pending schema migrations; return the names of those applied by this call."""
        applied = self._stores.migrator().apply()
        return [f"{m.version:04d}_{m.name}" for m in applied]

    def migration_status(self) -> MigrationStatus:
        """Applied, pending and unknown migrations of the app's schema."""
        return self._stores.migrator().status()

    def migration_sql(self) -> str:
        """The SQL of the pending migrations, for a DBA to review or run by hand."""
        found = self._stores.migrator().status()
        return pending_sql(found.pending, self._settings.schema)

    def close(self) -> None:
        """Close the app's connection pool (each of ``close`` and ``close`` closes the
        pool of its own side)."""
        self._stores.close()

    # -- maintenance, health, diagnosis ----------------------------------------------------

    def maintain(self, *, chunk: int = 1000) -> dict[str, int]:
        """Run one full maintenance pass now and return what it did: ``partitions_created``
        and ``partitions_dropped`` (the history's partitions, created ahead as far as the
        longest retention in use, and dropped whole once every row in them may go), the rows
        deleted per kind: ``dead_letters`` (failed jobs older than the app's
        ``dead_retention``), ``throttle`` (closed throttle windows), ``schedule_ticks`` (tick
        rows no scheduler needs any more); and ``vacuumed``, how many of the live table and
        the dead letters it then vacuumed because dead tuples piled up in them (or, the live
        table, because it outgrew its planner statistics).

        Workers do this on their own, on the one holding the maintenance lease; call it from
        tests or from a deployment that runs no worker. Deletes ``chunk`` rows per statement.
        """
        settings = self._settings
        store = self._stores.store()
        counts = store.maintain(
            dead_retention=settings.dead_retention,
            default_retention=settings.defaults.get("retention", DEFAULT_RETENTION),
            tick_keep=SCHEDULE_TICK_KEEP,
            chunk=check_int("chunk", chunk, 1, 100_000),
            now=settings.clock(),
        )
        vacuumed = store.vacuum_churned(VACUUM_MIN_DEAD, VACUUM_DEAD_SHARE)
        return {**counts, "vacuumed": len(vacuumed)}

    def health(
        self, *, max_wait: float | None = None, min_workers: int = 0, stale_after: float = 30.0
    ) -> Health:
        """The health of the database, schema, workers and queues, for probes: never raises
        for an unreachable database, reports it (``database`` false).

        A problem is listed for pending or unknown migrations, fewer than ``min_workers``
        workers with a heartbeat younger than ``stale_after`` seconds, and each queue whose
        oldest runnable job waited more than ``max_wait`` seconds.
        """
        if max_wait is not None:
            check_seconds("max_wait", max_wait, allow_zero=True)
        check_int("min_workers", min_workers, 0, 1_000_000)
        check_seconds("stale_after", stale_after, allow_zero=False)
        try:
            found = self._stores.migrator().status()
        except DatabaseUnavailable as exc:
            return diagnosis.unreachable(str(exc).strip().splitlines()[0])
        pending = [f"{m.version:04d}_{m.name}" for m in found.pending]
        workers, queues, troubles = 0, [], []
        if found.applied:
            store = self._stores.store()
            try:
                workers = store.worker_count_alive(stale_after)
                troubles = store.worker_troubles(stale_after)
                queues = store.queue_live_counts(self._settings.clock())
            except DatabaseUnavailable as exc:
                return diagnosis.unreachable(str(exc).strip().splitlines()[0])
        return diagnosis.assess_health(
            pending=pending,
            unknown=found.unknown,
            workers=workers,
            queues=queues,
            max_wait=max_wait,
            min_workers=min_workers,
            troubles=troubles,
        )

    def diagnose(self, *, stale_after: float = 30.0, notify_timeout: float = 1.0) -> list[Finding]:
        """What ``conveyor doctor`` reports, one :class:`~conveyor.models.Finding` per problem
        (or one ``ok`` per clean check): schema version and drift from what the migrations
        build, table and index bloat, the history's partitions (runway, drops, the leader's
        failures), old transactions holding back vacuum, orphaned or stuck jobs, silent
        workers, and whether LISTEN/NOTIFY works.

        A check that cannot run becomes an error finding; an unreachable database raises
        :class:`~conveyor.errors.DatabaseUnavailable`.
        """
        check_seconds("stale_after", stale_after, allow_zero=False)
        check_seconds("notify_timeout", notify_timeout, allow_zero=False)
        findings: list[Finding] = []
        for check, run in (
            ("schema", self._diagnose_schema),
            ("bloat", self._diagnose_bloat),
            ("history", self._diagnose_history),
            ("transactions", self._diagnose_transactions),
            ("jobs", self._diagnose_jobs),
            ("workers", self._diagnose_workers),
            ("schedules", self._diagnose_schedules),
            ("notify", self._diagnose_notify),
        ):
            try:
                findings.extend(run(stale_after, notify_timeout))
            except DatabaseUnavailable:
                raise
            except Exception as exc:  # one check that cannot run (a missing privilege, ...)
                findings.append(diagnosis.failed_check(check, exc))
        return findings

    def _diagnose_schema(self, stale_after: float, timeout: float) -> list[Finding]:
        migrator = self._stores.migrator()
        try:
            found = migrator.status()
        except MigrationChecksumMismatch as exc:
            return [diagnosis.changed_migration(str(exc))]
        missing: list[str] = []
        unexpected: list[str] = []
        invalid: list[str] = []
        if found.applied and not found.unknown:
            missing, unexpected = migrator.drift(found.applied)
            invalid = self._stores.store().doctor_invalid_indexes()
        return diagnosis.schema_findings(
            pending=[f"{m.version:04d}_{m.name}" for m in found.pending],
            unknown=found.unknown,
            missing=missing,
            unexpected=unexpected,
            invalid_indexes=invalid,
        )

    def _diagnose_bloat(self, stale_after: float, timeout: float) -> list[Finding]:
        store = self._stores.store()
        return diagnosis.bloat_findings(
            store.doctor_tables(),
            store.doctor_indexes(),
            store.doctor_autovacuum(),
        )

    def _diagnose_history(self, stale_after: float, timeout: float) -> list[Finding]:
        archive = self._stores.store().doctor_archive()
        default = self._settings.defaults.get("retention", DEFAULT_RETENTION)
        return diagnosis.history_findings(archive, default)

    def _diagnose_transactions(self, stale_after: float, timeout: float) -> list[Finding]:
        rows = self._stores.store().doctor_old_transactions()
        return diagnosis.transaction_findings(rows)

    def _diagnose_jobs(self, stale_after: float, timeout: float) -> list[Finding]:
        store = self._stores.store()
        return diagnosis.job_findings(
            store.doctor_orphaned_jobs(stale_after),
            store.doctor_stuck_waiting(),
        )

    def _diagnose_workers(self, stale_after: float, timeout: float) -> list[Finding]:
        store = self._stores.store()
        rows = store.doctor_stale_workers(stale_after)
        troubles = diagnosis.trouble_findings(store.worker_troubles(stale_after))
        return troubles + diagnosis.worker_findings(rows)

    def _diagnose_schedules(self, stale_after: float, timeout: float) -> list[Finding]:
        return diagnosis.schedule_findings(self._stores.store().schedule_list())

    def _diagnose_notify(self, stale_after: float, timeout: float) -> list[Finding]:
        store = self._stores.store()
        if store.listen_dsn is None:
            return [diagnosis.polling()]
        try:
            seconds = store.notify_round_trip(timeout)
        except DatabaseUnavailable as exc:  # the listen_dsn, not the database doctor reads
            return [diagnosis.listen_unreachable(str(exc))]
        return diagnosis.notify_findings(seconds, timeout)
