"""Prometheus metrics of a Conveyor app, fed by its lifecycle events and by cheap counts.

::

    metrics = Metrics(app)
    metrics.install()              # before the worker starts: it subscribes to the app's events
    body, content_type = metrics.render()

Exported (every job metric is labelled by ``queue``):

- ``conveyor_jobs{queue,state}``: jobs ``created``, ``retry``, ``active`` (from the live table)
  and ``failed`` (the dead letters), counted at most once per ``cache_seconds``. Completed and
  cancelled jobs are not counted here, since that would scan the whole history; the
  throughput counters cover them.
- ``conveyor_queue_oldest_waiting_seconds{queue}``: how long the oldest runnable job has waited.
- ``conveyor_workers``: workers with a heartbeat younger than ``stale_after``.
- ``conveyor_jobs_started_total``, ``..._completed_total``, ``..._retried_total``,
  ``..._snoozed_total``, ``..._failed_total`` (jobs whose last attempt failed: they are in state
  ``failed``, in the dead letters) and ``..._dead_total`` (the same count, under the dead
  letters' name), and ``conveyor_attempts_failed_total`` (every failed attempt, retried or
  not): events seen by the workers of this process, recovery of dead workers' jobs included.
- ``conveyor_job_run_seconds{queue}``: from the start of an attempt to its outcome in this
  process; ``conveyor_job_wait_seconds{queue}``: from ``run_at`` to the start of the attempt.
- ``conveyor_worker_errors_total``, and ``conveyor_metrics_refresh_errors_total`` when the counts
  could not be read (the previous counts are served meanwhile).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from conveyor._store.store import Store
from conveyor.config import resolve_dsn, resolve_read_dsn
from conveyor.errors import ConveyorError
from conveyor.events import Event

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.metrics")

COUNTED_STATES = ("created", "retry", "active", "failed")
# Job durations from milliseconds to hours.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# Attempts whose start was seen but whose end never will be (cancelled, handed back at
# shutdown) must not pile up: beyond this many, the oldest are forgotten.
MAX_TRACKED = 100_000
# Event -> counter. "failed" is the job's state (its last attempt failed); a single failed
# attempt is counted apart, as an attempt.
OUTCOMES = {
    "job.completed": ("conveyor_jobs_completed", "Jobs completed."),
    "job.attempt_failed": ("conveyor_attempts_failed", "Attempts that failed (retried or not)."),
    "job.retried": ("conveyor_jobs_retried", "Jobs queued again after a failed attempt."),
    "job.snoozed": ("conveyor_jobs_snoozed", "Jobs that asked to run later (Retry)."),
    "job.failed": ("conveyor_jobs_failed", "Jobs whose last attempt failed (dead letters)."),
    "job.dead": ("conveyor_jobs_dead", "Jobs sent to the dead letters (same as failed)."),
}
# The events that end an attempt, from which its run time is measured.
ATTEMPT_ENDS = frozenset({"job.completed", "job.attempt_failed", "job.snoozed"})
# Seconds a scrape waits for the database before serving the previous counts; below
# Prometheus' default scrape timeout of 10 s.
DATABASE_TIMEOUT = 5.0


class Metrics:
    """The Prometheus metrics of one app, in a registry of their own.

    The job and worker counts are read at most once per ``cache_seconds``, on a connection of
    their own (to the app's ``read_dsn`` when it has one); a worker counts as alive while its
    heartbeat is younger than ``stale_after``. ``render`` queries the database (when the
    counts are stale): from async code, call it in a thread.
    """

    def __init__(
        self, app: Conveyor, *, cache_seconds: float = 5.0, stale_after: float = 30.0
    ) -> None:
        self.app = app
        self.cache_seconds = cache_seconds
        self.stale_after = stale_after
        self.registry = CollectorRegistry()
        self._installed = False
        self._lock = threading.Lock()
        self._started: dict[tuple[UUID, int], float] = {}
        self._store: Store | None = None
        self._counts = _Counts(self)
        self.registry.register(self._counts)
        labels = ["queue"]
        self._started_total = Counter(
            "conveyor_jobs_started", "Attempts started.", labels, registry=self.registry
        )
        self._outcomes = {
            event: Counter(metric, f"{text} Events seen by this process.", labels,
                           registry=self.registry)
            for event, (metric, text) in OUTCOMES.items()
        }  # fmt: skip
        self._run_seconds = Histogram(
            "conveyor_job_run_seconds", "Seconds from an attempt's start to its outcome.", labels,
            buckets=BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._wait_seconds = Histogram(
            "conveyor_job_wait_seconds", "Seconds from a job's run_at to its attempt's start.",
            labels, buckets=BUCKETS, registry=self.registry,
        )  # fmt: skip
        self._worker_errors = Counter(
            "conveyor_worker_errors", "Errors of the workers themselves.", registry=self.registry
        )
        self.refresh_errors = Counter(
            "conveyor_metrics_refresh_errors",
            "Scrapes that could not read the job counts.",
            registry=self.registry,
        )

    def install(self) -> None:
        """Subscribe to the app's events; call it before starting a worker. Idempotent."""
        with self._lock:
            if self._installed:
                return
            self._installed = True
        self.app.on("job.started")(self._on_started)
        for name in OUTCOMES:
            self.app.on(name)(self._on_outcome)
        self.app.on("worker.error")(self._on_worker_error)

    def render(self) -> tuple[bytes, str]:
        """The metrics in the Prometheus text format, and its content type; the job and worker
        counts are read again when older than ``cache_seconds``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """Close the connection the counts are read on."""
        if self._store is not None:
            self._store.close()

    def _database(self) -> Store:
        """The metrics' own one-connection pool: a scrape never waits for the app's pool."""
        if self._store is None:
            settings = self.app.settings
            # Counts are inspection reads: on the standby when the app has one.
            dsn = resolve_read_dsn(settings.read_dsn) or resolve_dsn(settings.dsn)
            self._store = Store(
                dsn, settings.schema, min_size=0, max_size=1,
                application_name=f"conveyor-metrics {settings.schema}", timeout=DATABASE_TIMEOUT,
                prepare=not settings.pgbouncer,
            )  # fmt: skip
        return self._store

    def _on_started(self, event: Event) -> None:
        job = event.job
        if job is None:
            return
        self._started_total.labels(job.queue).inc()
        if job.started_at is not None:
            wait = (job.started_at - job.run_at).total_seconds()
            self._wait_seconds.labels(job.queue).observe(max(wait, 0.0))
        with self._lock:
            if len(self._started) >= MAX_TRACKED:
                del self._started[next(iter(self._started))]
            self._started[(job.id, job.attempt)] = time.monotonic()

    def _on_outcome(self, event: Event) -> None:
        job = event.job
        queue = job.queue if job is not None else event.queue or ""
        self._outcomes[event.name].labels(queue).inc()
        if job is None or event.name not in ATTEMPT_ENDS:
            return
        with self._lock:
            began = self._started.pop((job.id, job.attempt), None)
        if began is not None:
            self._run_seconds.labels(job.queue).observe(time.monotonic() - began)

    def _on_worker_error(self, event: Event) -> None:
        self._worker_errors.inc()


class _Counts(Collector):
    """The gauges read from the database, cached for ``cache_seconds``."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._queues: list[dict[str, Any]] = []
        self._workers = 0

    def describe(self) -> Iterator[Metric]:
        return iter(self._families([], 0))

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        with self._lock:
            if time.monotonic() - self._read_at >= metrics.cache_seconds:
                self._refresh()
            queues, workers = self._queues, self._workers
        return iter(self._families(queues, workers))

    def _refresh(self) -> None:
        metrics = self._metrics
        try:
            store = metrics._database()
            self._queues = store.queue_live_counts(metrics.app.settings.clock())
            self._workers = store.worker_count_alive(metrics.stale_after)
        except ConveyorError as exc:
            log.warning("could not read the job counts for metrics: %s", exc)
            metrics.refresh_errors.inc()
            return
        self._read_at = time.monotonic()

    @staticmethod
    def _families(queues: list[dict[str, Any]], workers: int) -> list[Metric]:
        jobs = GaugeMetricFamily(
            "conveyor_jobs", "Jobs by queue and state (live and dead ones).",
            labels=["queue", "state"],
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            "conveyor_queue_oldest_waiting_seconds",
            "How long the oldest runnable job of the queue has waited past its run_at.",
            labels=["queue"],
        )
        for row in queues:
            for state in COUNTED_STATES:
                jobs.add_metric([row["queue"], state], row[state])
            oldest.add_metric([row["queue"]], row["oldest_waiting_seconds"] or 0.0)
        alive = GaugeMetricFamily("conveyor_workers", "Workers with a recent heartbeat.")
        alive.add_metric([], workers)
        return [jobs, oldest, alive]
