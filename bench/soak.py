"""Soak test: does the database stay bounded under hours of steady load? (Not run in CI.)

    .venv/bin/python -m bench.soak [--dsn DSN] [--minutes 15] [--rate 1000] [--retention 120]

A producer sends ``--rate`` jobs/s (a batch every 10 ms) while one worker process (concurrency 10,
maintenance on, as any deployed worker runs it) runs them. Jobs are kept ``--retention`` seconds
after they finish, so the worker's maintenance deletes history all along. Every ``--sample``
seconds it prints: the live table's total size and dead tuples, the history's rows and size, the
backlog, and the throughput since the last sample. The live table and the history must level
off; if they grow from sample to sample to the end, the table says so.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import psycopg

from bench.run import ROOT
from conveyor import Conveyor
from conveyor.testing import LOCAL_TEST_DSN

SCHEMA = "conveyor_soak"
MB = 1024 * 1024

# How many jobs have finished: every one leaves the live table by a DELETE. (The archive
# partitions' insert counters would not do: a dropped partition takes its counts with it.)
FINISHED = f"""(SELECT n_tup_del FROM pg_stat_user_tables
        WHERE schemaname = '{SCHEMA}' AND relname = 'job')"""

SAMPLE = f"""
SELECT pg_total_relation_size('{SCHEMA}.job'),
       (SELECT n_dead_tup FROM pg_stat_user_tables
        WHERE schemaname = '{SCHEMA}' AND relname = 'job'),
       (SELECT coalesce(sum(s.n_live_tup), 0)::bigint FROM pg_stat_user_tables s
        JOIN pg_partition_tree('{SCHEMA}.job_archive') t ON s.relid = t.relid),
       (SELECT sum(pg_total_relation_size(t.relid))::bigint
        FROM pg_partition_tree('{SCHEMA}.job_archive') t)
       + pg_total_relation_size('{SCHEMA}.job_dead'),
       (SELECT count(*) FROM {SCHEMA}.job WHERE state IN ('created', 'retry')),
       {FINISHED}
"""
HEADER = (
    "| minute | live table | live dead tuples | history rows (statistics) | history size | backlog "
    "| finished jobs/s |"
)


def reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    with Conveyor(dsn, schema=SCHEMA) as app:
        app.migrate()


@contextlib.contextmanager
def worker(dsn: str, every: float) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """One worker process (concurrency 10) serving the bench queue, stopped with SIGTERM, and
    the newest of its reports of how long jobs waited to start (every ``every`` seconds)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.worker_proc", dsn, SCHEMA, "serve", "10", str(every)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    latest: dict[str, Any] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            report = json.loads(line)
            if "waits" in report:
                latest.update(report["waits"])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        time.sleep(1.5)
        yield proc, latest
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        reader.join(timeout=10)


Sampled = tuple[dict[str, Any], int]  # the figures of one sample, and jobs finished so far


def sample_every(
    dsn: str,
    every: float,
    done: threading.Event,
    rows: list[dict[str, Any]],
    take: Callable[[psycopg.Connection[Any]], Sampled],
    show: Callable[[dict[str, Any]], str],
    worker_pid: int | None = None,
    waits: dict[str, Any] | None = None,
) -> None:
    """Every ``every`` seconds until ``done``: ``take`` a sample, add the minute, the
    throughput since the last one (jobs finished a second), the worker's newest wait percentiles
    (``waits``) and, given its pid, the worker process's resident memory and its share of a core
    since the last one; keep it and print ``show(row)``."""
    start = time.perf_counter()
    process = None if worker_pid is None else psutil.Process(worker_pid)
    with psycopg.connect(dsn, autocommit=True) as conn:
        last_finished, last_at = 0, start
        last_cpu = 0.0 if process is None else sum(process.cpu_times()[:2])
        last_db = postgres_cpu()
        while not done.wait(every - (time.perf_counter() - start) % every):
            row, finished = take(conn)
            row.update(waits or {})
            now = time.perf_counter()
            row["minute"] = (now - start) / 60
            row["throughput"] = (finished - last_finished) / (now - last_at)
            if process is not None:
                cpu = sum(process.cpu_times()[:2])
                row["worker_rss_mb"] = process.memory_info().rss / MB
                row["worker_cpu"] = (cpu - last_cpu) / (now - last_at)
                last_cpu = cpu
            db = postgres_cpu()
            # Per process: one that ended since (a connection closed) takes its seconds along.
            used = sum(cpu - last_db.get(pid, 0.0) for pid, cpu in db.items())
            row["db_cpu"] = used / (now - last_at)
            last_db = db
            last_finished, last_at = finished, now
            rows.append(row)
            print(show(row), flush=True)


def postgres_cpu() -> dict[int, float]:
    """CPU seconds spent so far by each PostgreSQL process running now (on this machine)."""
    return {
        proc.pid: sum(proc.info["cpu_times"][:2])
        for proc in psutil.process_iter(["name", "cpu_times"])
        if proc.info["name"] in ("postgres", "postmaster") and proc.info["cpu_times"]
    }


def take_soak(conn: psycopg.Connection[Any]) -> Sampled:
    """The soak's figures: table sizes, dead tuples and backlog."""
    found = conn.execute(SAMPLE).fetchone()
    assert found is not None
    live, dead, history, history_bytes, backlog, finished = found
    row = {
        "live_mb": live / MB,
        "dead": int(dead or 0),
        "history": int(history),
        "history_mb": history_bytes / MB,
        "backlog": int(backlog),
    }
    return row, int(finished or 0)


def show_soak(row: dict[str, Any]) -> str:
    """One line of the soak's table."""
    return (
        f"| {row['minute']:.1f} | {row['live_mb']:.2f} MB | {row['dead']:,} "
        f"| {row['history']:,} | {row['history_mb']:.1f} MB | {row['backlog']:,} "
        f"| {row['throughput']:,.0f} |"
    )


def verdict(rows: list[dict[str, Any]]) -> str:
    """Whether the live table and the history levelled off over the last half of the run."""
    half = rows[len(rows) // 2 :]
    if len(half) < 2:
        return "too short to judge"
    parts = []
    for key, name in (("live_mb", "live table"), ("history", "history"), ("dead", "dead tuples")):
        first, peak, last = half[0][key], max(r[key] for r in half), half[-1][key]
        rising = all(b[key] >= a[key] for a, b in itertools.pairwise(half))
        grows = rising and last > 1.2 * first and last > 0
        parts.append(
            f"{name}: {'GROWS without levelling off' if grows else 'bounded'} "
            f"(second half from {first:,.2f} to {last:,.2f}, peak {peak:,.2f})"
        )
    return "; ".join(parts)


def steady(
    dsn: str,
    rate: int,
    seconds: float,
    retention: float,
    every: float,
    take: Callable[[psycopg.Connection[Any]], Sampled],
    show: Callable[[dict[str, Any]], str],
) -> tuple[list[dict[str, Any]], int, float]:
    """Send ``rate`` jobs/s (a batch every 10 ms) for ``seconds`` while one worker process runs
    them and the tables are sampled every ``every`` seconds; the samples, jobs sent, seconds."""
    rows: list[dict[str, Any]] = []
    done = threading.Event()
    per_tick = max(1, rate // 100)
    with (
        worker(dsn, every) as (proc, waits),
        Conveyor(dsn, schema=SCHEMA, retention=retention) as app,
    ):
        thread = threading.Thread(
            target=sample_every,
            args=(dsn, every, done, rows, take, show, proc.pid, waits),
            daemon=True,
        )
        thread.start()
        start = time.perf_counter()
        tick = sent = 0
        while time.perf_counter() - start < seconds:
            app.send_batch([("bench", {"i": sent + k}) for k in range(per_tick)])
            sent += per_tick
            tick += 1
            pause = tick * 0.01 - (time.perf_counter() - start)
            if pause > 0:
                time.sleep(pause)
        elapsed = time.perf_counter() - start
        done.set()
        thread.join()
    return rows, sent, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=LOCAL_TEST_DSN)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=1000, help="jobs sent per second")
    parser.add_argument("--retention", type=float, default=120.0, help="seconds kept after")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    args = parser.parse_args()
    reset(args.dsn)
    print(
        f"soak: {args.rate:,} jobs/s for {args.minutes:g} min, retention {args.retention:g}s, "
        f"one worker process x 10, maintenance on; a sample every {args.sample:g}s\n"
    )
    print(HEADER)
    print("|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    rows, sent, elapsed = steady(
        args.dsn, args.rate, args.minutes * 60, args.retention, args.sample, take_soak, show_soak
    )
    print(f"\nsent {sent:,} jobs in {elapsed:.0f}s ({sent / elapsed:,.0f} jobs/s)")
    print(verdict(rows))


if __name__ == "__main__":
    main()
