"""Real worker processes: many at once, SIGKILL, SIGTERM, killed connections, a restarted server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest

from conveyor import Conveyor, JobState

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def e2e(conveyor_dsn: str, conveyor_schema: str) -> Iterator[Conveyor]:
    """The test's view of the schema the workers use, with an empty ledger."""
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{conveyor_schema}".ledger '
            "(job_id uuid, attempt int, pid int, at timestamptz DEFAULT clock_timestamp())"
        )
        conn.execute(f'TRUNCATE "{conveyor_schema}".ledger')
    with Conveyor(conveyor_dsn, schema=conveyor_schema) as app:
        yield app
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        # The schema is shared by the tests of this xdist worker: leave only Conveyor's tables.
        conn.execute(f'DROP TABLE "{conveyor_schema}".ledger')


# Each worker's output goes to a file, read back by stop(): a pipe nobody reads while the test
# waits would fill up with the worker's log lines and block it on its next write.
_OUTPUT: dict[int, IO[str]] = {}


def start_worker(dsn: str, schema: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CONVEYOR_DATABASE_URL": dsn, "CONVEYOR_SCHEMA": schema}
    output = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed by stop())
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "worker", "tests.e2e.jobs:app", *args],
        cwd=ROOT,
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _OUTPUT[proc.pid] = output
    return proc


def ledger(dsn: str, schema: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f'SELECT job_id, attempt, pid FROM "{schema}".ledger').fetchall()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def stop(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=timeout)
    output = _OUTPUT.pop(proc.pid)
    output.seek(0)
    out = output.read()
    output.close()
    return proc.returncode, out


def completed(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM \"{schema}\".job_history WHERE state = 'completed'"
        ).fetchone()
    return int(row[0]) if row else 0


def test_four_processes_drain_twenty_thousand_jobs_exactly_once(
    e2e: Conveyor, conveyor_dsn: str
) -> None:
    n = 20_000
    ids = e2e.send_batch([("e2e.record", {"n": i}) for i in range(n)])
    proc = start_worker(conveyor_dsn, e2e.schema, "--processes", "4", "--concurrency", "10")
    try:
        wait_until(lambda: completed(conveyor_dsn, e2e.schema) == n, 240, "all jobs completed")
    finally:
        code, out = stop(proc)
    assert code == 0, out[-3000:]
    runs = ledger(conveyor_dsn, e2e.schema)
    assert len(runs) == n  # each job ran once: no duplicate, nothing lost
    assert {r[0] for r in runs} == set(ids)
    assert len({r[2] for r in runs}) >= 2  # the work was shared between processes
    assert e2e.queue_stats("e2e.record").counts[JobState.COMPLETED] == n
    assert e2e.list_jobs(state=["created", "retry", "active"]) == []


def test_a_job_of_a_killed_worker_runs_again_within_the_rescue_time(
    e2e: Conveyor, conveyor_dsn: str
) -> None:
    fast = ["--stale-after", "2", "--recover-interval", "0.5"]  # the heartbeat follows
    job_id = e2e.send("e2e.sleep", {"seconds": 60})
    victim = start_worker(conveyor_dsn, e2e.schema, *fast)
    try:
        wait_until(lambda: len(ledger(conveyor_dsn, e2e.schema)) == 1, 30, "first attempt")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed_at = time.monotonic()
        rescuer = start_worker(conveyor_dsn, e2e.schema, *fast)
        try:
            done = e2e.wait_for(job_id, timeout=30)
            recovered_in = time.monotonic() - killed_at
        finally:
            code, out = stop(rescuer)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert code == 0, out[-3000:]
    assert (done.state, done.attempt, done.result) == (JobState.COMPLETED, 2, "slept")
    assert done.errors[0]["type"] == "WorkerLost"
    assert recovered_in < 2 + 0.5 * 2 + 5  # stale_after + up to one jittered interval + slack
    assert sorted(r[1] for r in ledger(conveyor_dsn, e2e.schema)) == [1, 2]


def test_sigterm_lets_a_short_job_finish_and_exits_zero(e2e: Conveyor, conveyor_dsn: str) -> None:
    job_id = e2e.send("e2e.sleep", {"seconds": 1})
    proc = start_worker(conveyor_dsn, e2e.schema, "--shutdown-timeout", "20")
    wait_until(lambda: len(ledger(conveyor_dsn, e2e.schema)) == 1, 30, "the job to start")
    code, out = stop(proc)
    assert code == 0, out[-3000:]
    job = e2e.get_job(job_id)
    assert (job.state, job.attempt) == (JobState.COMPLETED, 1)


def test_sigterm_hands_a_long_job_back_with_its_attempt_unspent(
    e2e: Conveyor, conveyor_dsn: str
) -> None:
    job_id = e2e.send("e2e.sleep", {"seconds": 600})
    proc = start_worker(conveyor_dsn, e2e.schema, "--shutdown-timeout", "0.5")
    wait_until(lambda: len(ledger(conveyor_dsn, e2e.schema)) == 1, 30, "the job to start")
    started = time.monotonic()
    code, out = stop(proc)
    assert code == 0, out[-3000:]
    assert time.monotonic() - started < 10
    job = e2e.get_job(job_id)
    assert (job.state, job.attempt, job.worker_id) == (JobState.CREATED, 0, None)


def test_a_second_signal_stops_at_once(e2e: Conveyor, conveyor_dsn: str) -> None:
    job_id = e2e.send("e2e.sleep", {"seconds": 600})
    proc = start_worker(conveyor_dsn, e2e.schema, "--shutdown-timeout", "600")
    wait_until(lambda: len(ledger(conveyor_dsn, e2e.schema)) == 1, 30, "the job to start")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    code, out = stop(proc, timeout=15)
    assert code == 0, out[-3000:]
    assert e2e.get_job(job_id).state is JobState.CREATED


def test_terminated_connections_are_survived(e2e: Conveyor, conveyor_dsn: str) -> None:
    n = 1000
    e2e.send_batch([("e2e.record", {"n": i}) for i in range(n)])
    proc = start_worker(conveyor_dsn, e2e.schema, "--concurrency", "4", "--poll-interval", "60")
    try:
        took = wait_until(lambda: completed(conveyor_dsn, e2e.schema) > 200, 60, "progress")
        print(f"200 jobs in {took:.1f}s")
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name IN (%s, 'e2e ledger')",
                [f"conveyor-worker {e2e.schema}"],
            ).fetchone()
        assert killed is not None and killed[0] >= 2  # pool and LISTEN connections at least
        took = wait_until(lambda: completed(conveyor_dsn, e2e.schema) == n, 120, "all jobs")
        print(f"all done {took:.1f}s after the connections were killed")
        # The LISTEN connection came back: with a 60 s poll, only a NOTIFY explains a prompt start.
        time.sleep(1.5)
        begin = time.monotonic()
        late = e2e.send("e2e.record", {"n": "late"})
        assert e2e.wait_for(late, timeout=20).state is JobState.COMPLETED
        assert time.monotonic() - begin < 5
    finally:
        code, out = stop(proc)
    assert code == 0, out[-3000:]
    runs = ledger(conveyor_dsn, e2e.schema)
    assert {r[0] for r in runs} == {j.id for j in e2e.list_jobs(queue="e2e.record", limit=n + 1)}


def test_a_flow_survives_sigkill_of_its_worker_mid_way(e2e: Conveyor, conveyor_dsn: str) -> None:
    """Children complete and release their parent in one transaction: a worker killed at any
    point of the flow leaves it whole, and the parent runs exactly once, with every result."""
    fast = ["--stale-after", "2", "--heartbeat-interval", "0.5", "--recover-interval", "0.5"]
    n = 300
    parent = e2e.flow(
        ("e2e.flow.parent", {}),
        children=[("e2e.flow.child", {"n": i, "seconds": 0.01}) for i in range(n)],
    )
    victim = start_worker(conveyor_dsn, e2e.schema, "--concurrency", "10", *fast)
    try:
        wait_until(lambda: completed(conveyor_dsn, e2e.schema) >= n // 3, 60, "a third done")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        assert e2e.get_job(parent).state is JobState.WAITING
        rescuer = start_worker(conveyor_dsn, e2e.schema, "--concurrency", "10", *fast)
        try:
            done = e2e.wait_for(parent, timeout=60)
        finally:
            code, out = stop(rescuer)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert code == 0, out[-3000:]
    assert (done.state, done.result) == (JobState.COMPLETED, sum(range(n)))
    runs = ledger(conveyor_dsn, e2e.schema)
    assert [r[0] for r in runs].count(parent) == 1
    assert {r[0] for r in runs} == {parent, *done.depends_on}
    assert e2e.queue_stats("e2e.flow.child").counts[JobState.COMPLETED] == n


def test_a_worker_killed_after_its_handlers_transaction_committed_leaves_the_job_completed_once(
    e2e: Conveyor, conveyor_dsn: str
) -> None:
    fast = ["--stale-after", "2", "--recover-interval", "0.5"]
    job_id = e2e.send("e2e.tx.die_after_commit", {})
    victim = start_worker(conveyor_dsn, e2e.schema, *fast)
    try:
        victim.wait(30)  # the handler kills its worker right after the commit
    finally:
        if victim.poll() is None:
            victim.kill()
    assert victim.returncode == -signal.SIGKILL
    dead = {w.id for w in e2e.list_workers()}
    assert len(dead) == 1
    rescuer = start_worker(conveyor_dsn, e2e.schema, *fast)
    try:
        # Recovery has looked at the dead worker's jobs once its row is gone.
        wait_until(lambda: not dead & {w.id for w in e2e.list_workers()}, 30, "recovery")
        marker = e2e.send("e2e.record", {})
        e2e.wait_for(marker, timeout=30)
    finally:
        code, out = stop(rescuer)
    assert code == 0, out[-3000:]
    done = e2e.get_job(job_id)
    assert (done.state, done.attempt, done.result, done.errors) == (
        JobState.COMPLETED, 1, "committed", []
    )  # fmt: skip
    assert [r[:2] for r in ledger(conveyor_dsn, e2e.schema) if r[0] == job_id] == [(job_id, 1)]
