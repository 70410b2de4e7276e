"""Prometheus metrics fed by a real worker's events and counts read from a real PostgreSQL."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Conveyor, Fail, FrozenClock, Job, Retry
from conveyor import metrics as metrics_module
from conveyor.cli import main
from conveyor.events import Event
from conveyor.metrics import Metrics


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def q(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def test_events_feed_counters_and_histograms(app: Conveyor) -> None:
    @app.job("ok")
    def ok(job: Job) -> None:
        time.sleep(0.05)

    @app.job("flaky", retry_limit=1, retry_delay=0)
    def flaky(job: Job) -> None:
        raise ValueError("nope")

    @app.job("doomed", retry_limit=3)
    def doomed(job: Job) -> None:
        raise Fail("never")

    metrics = Metrics(app)
    metrics.install()
    metrics.install()  # idempotent: events are not counted twice
    for _ in range(3):
        app.send("ok", {})
    app.send("flaky", {})
    app.send("doomed", {})
    app.drain()
    body, content_type = metrics.render()
    metrics.close()
    assert content_type.startswith("text/plain")
    got = samples(body)
    assert got[q("conveyor_jobs_started_total", queue="ok")] == 3
    assert got[q("conveyor_jobs_completed_total", queue="ok")] == 3
    assert got[q("conveyor_jobs_started_total", queue="flaky")] == 2
    # "failed" is the job's state: once per job that ran out of attempts, not per attempt.
    assert got[q("conveyor_attempts_failed_total", queue="flaky")] == 2
    assert got[q("conveyor_jobs_retried_total", queue="flaky")] == 1
    assert got[q("conveyor_jobs_failed_total", queue="flaky")] == 1
    assert got[q("conveyor_jobs_dead_total", queue="flaky")] == 1
    assert got[q("conveyor_attempts_failed_total", queue="doomed")] == 1
    assert got[q("conveyor_jobs_failed_total", queue="doomed")] == 1
    assert got[q("conveyor_jobs_dead_total", queue="doomed")] == 1
    assert q("conveyor_jobs_retried_total", queue="doomed") not in got
    assert got[q("conveyor_job_run_seconds_count", queue="ok")] == 3
    assert got[q("conveyor_job_run_seconds_sum", queue="ok")] >= 0.15
    assert got[q("conveyor_job_run_seconds_bucket", queue="ok", le="0.01")] == 0
    assert got[q("conveyor_job_run_seconds_count", queue="flaky")] == 2
    assert got[q("conveyor_job_wait_seconds_count", queue="ok")] == 3
    # Counts from the database: the dead letters; nothing live is left.
    assert got[q("conveyor_jobs", queue="flaky", state="failed")] == 1
    assert got[q("conveyor_jobs", queue="ok", state="failed")] == 0
    assert got[q("conveyor_jobs", queue="ok", state="created")] == 0
    assert got[q("conveyor_workers")] == 0


def test_wait_time_runs_from_run_at_to_the_start(conveyor_dsn: str, conveyor_schema: str) -> None:
    clock = FrozenClock(datetime(2031, 3, 1, 9, 0, tzinfo=UTC))
    with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:

        @app.job("late")
        def late(job: Job) -> None:
            pass

        metrics = Metrics(app)
        metrics.install()
        app.send("late", {})
        clock.advance(timedelta(seconds=42))
        app.drain()
        got = samples(metrics.render()[0])
        metrics.close()
    assert got[q("conveyor_job_wait_seconds_sum", queue="late")] == pytest.approx(42)
    assert got[q("conveyor_job_wait_seconds_bucket", queue="late", le="30.0")] == 0
    assert got[q("conveyor_job_wait_seconds_bucket", queue="late", le="60.0")] == 1


def test_snoozes_are_counted(app: Conveyor) -> None:
    calls = []

    @app.job("nap")
    def nap(job: Job) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Retry()

    metrics = Metrics(app)
    metrics.install()
    app.send("nap", {})
    app.drain()
    got = samples(metrics.render()[0])
    metrics.close()
    assert got[q("conveyor_jobs_snoozed_total", queue="nap")] == 1
    assert got[q("conveyor_jobs_completed_total", queue="nap")] == 1


def test_recovery_outcomes_and_worker_errors_are_counted(app: Conveyor) -> None:
    metrics = Metrics(app)
    metrics.install()
    worker = uuid.uuid4()
    # What the leader's recovery emits: the outcome, with the job's id and queue only.
    for name in ("job.attempt_failed", "job.failed", "job.dead"):
        app._events.emit(Event(name, worker, job_id=uuid.uuid4(), queue="lost"))
    for name in ("job.attempt_failed", "job.retried"):
        app._events.emit(Event(name, worker, job_id=uuid.uuid4(), queue="lost"))
    app._events.emit(Event("worker.error", worker, error={"message": "connection lost"}))
    got = samples(metrics.render()[0])
    metrics.close()
    assert got[q("conveyor_attempts_failed_total", queue="lost")] == 2
    assert got[q("conveyor_jobs_failed_total", queue="lost")] == 1
    assert got[q("conveyor_jobs_dead_total", queue="lost")] == 1
    assert got[q("conveyor_jobs_retried_total", queue="lost")] == 1
    assert got[q("conveyor_worker_errors_total")] == 1


def test_metrics_port_needs_a_single_process() -> None:
    result = CliRunner().invoke(
        main, ["worker", "x:app", "--processes", "2", "--metrics-port", "9100"]
    )
    assert result.exit_code == 2
    assert "--metrics-port" in result.stderr and result.stderr.count("\n") == 1


def test_counts_by_queue_and_state_are_cached(app: Conveyor) -> None:
    for _ in range(2):
        app.send("a", {})
    app.send("b", {}, start_after=3600)
    metrics = Metrics(app, cache_seconds=3600)
    got = samples(metrics.render()[0])
    assert got[q("conveyor_jobs", queue="a", state="created")] == 2
    assert got[q("conveyor_jobs", queue="b", state="created")] == 1
    assert got[q("conveyor_jobs", queue="a", state="active")] == 0
    assert got[q("conveyor_queue_oldest_waiting_seconds", queue="b")] == 0
    assert got[q("conveyor_queue_oldest_waiting_seconds", queue="a")] >= 0
    app.send("a", {})
    cached = samples(metrics.render()[0])
    assert cached[q("conveyor_jobs", queue="a", state="created")] == 2
    fresh = Metrics(app, cache_seconds=0)
    assert samples(fresh.render()[0])[q("conveyor_jobs", queue="a", state="created")] == 3
    metrics.close()
    fresh.close()


def test_an_unreachable_database_is_counted_and_the_scrape_still_answers(
    conveyor_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_module, "DATABASE_TIMEOUT", 0.5)
    app = Conveyor("postgresql://nobody@127.0.0.1:1/none?connect_timeout=1", schema=conveyor_schema)
    metrics = Metrics(app)
    got = samples(metrics.render()[0])
    assert got[q("conveyor_metrics_refresh_errors_total")] == 1
    assert got[q("conveyor_workers")] == 0
    metrics.close()


async def test_live_workers_are_counted(app_async: Conveyor) -> None:
    @app_async.job("w")
    def w(job: Job) -> None:
        pass

    stop = asyncio.Event()
    task = asyncio.create_task(app_async.run_worker_async(["w"], stop=stop, poll_interval=0.1))
    try:
        while not await app_async.list_workers_async():
            await asyncio.sleep(0.05)
        metrics = Metrics(app_async, cache_seconds=0)
        assert samples(metrics.render()[0])[q("conveyor_workers")] == 1
        stale = Metrics(app_async, cache_seconds=0, stale_after=0.000001)
        assert samples(stale.render()[0])[q("conveyor_workers")] == 0
        metrics.close()
        stale.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


APP_MODULE = """
from conveyor import Conveyor

app = Conveyor({dsn!r}, schema={schema!r})


@app.job("tick")
def tick(job):
    return job.data
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_worker_serves_metrics_over_http(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str, tmp_path: Path
) -> None:
    (tmp_path / "metricsapp.py").write_text(
        textwrap.dedent(APP_MODULE.format(dsn=conveyor_dsn, schema=conveyor_schema))
    )
    for i in range(4):
        app.send("tick", {"i": i})
    port = free_port()
    command = [sys.executable, "-m", "conveyor.cli", "worker", "metricsapp:app"]
    worker = subprocess.Popen(
        [*command, "--metrics-port", str(port), "--poll-interval", "0.2"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    got = samples(r.read())
            except OSError:
                got = {}
            if got.get(q("conveyor_jobs_completed_total", queue="tick")) == 4:
                break
            time.sleep(0.2)
        assert got[q("conveyor_jobs_completed_total", queue="tick")] == 4
        assert got[q("conveyor_job_run_seconds_count", queue="tick")] == 4
    finally:
        worker.terminate()
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err.decode()
