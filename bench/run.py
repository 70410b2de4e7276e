"""Conveyor's benchmark: every figure beside a pgbench floor doing the same SQL with no client.

    .venv/bin/python -m bench.run [--dsn DSN] [--jobs 20000] [--quick]

Needs a PostgreSQL (default 127.0.0.1:5432/test) and its pgbench. Each figure is a median of
``--rounds`` runs on a fresh schema and is printed as a ratio to its floor, measured in the same
run. It also checks that every drained job ran exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from conveyor import Conveyor
from conveyor.testing import LOCAL_TEST_DSN

# A schema of its own per checkout (CONVEYOR_BENCH_SCHEMA), so two benchmarks never share one.
SCHEMA = os.environ.get("CONVEYOR_BENCH_SCHEMA", "conveyor_bench")
ROOT = Path(__file__).resolve().parent.parent

# The SQL floors: what our hot path does, as plain statements pgbench runs with no client work.
INSERT_ONE = """
INSERT INTO {s}.job (id, queue, data, run_at, retry_limit, retry_delay, retry_backoff,
                     retry_delay_max, expire_in, retention, created_at)
VALUES (gen_random_uuid(), 'floor', '{{"i": 1}}', now(), 2, 5, 'exponential', 3600, 900,
        604800, now());
"""
INSERT_MANY = """
INSERT INTO {s}.job (id, queue, data, run_at, retry_limit, retry_delay, retry_backoff,
                     retry_delay_max, expire_in, retention, created_at)
SELECT gen_random_uuid(), 'floor', jsonb_build_object('i', g), now(), 2, 5, 'exponential',
       3600, 900, 604800, now()
FROM generate_series(1, {n}) g;
"""
CLAIM_COMPLETE = """
WITH picked AS (
    SELECT id FROM {s}.job
    WHERE queue = 'floor' AND state IN ('created', 'retry') AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT 100
    FOR UPDATE SKIP LOCKED
), done AS (
    DELETE FROM {s}.job j USING picked WHERE j.id = picked.id RETURNING j.*
), routes AS (
    -- Routed once per distinct retention, as ack_jobs does (job_history is a view now).
    SELECT r.retention,
           {s}.archive_drop_at(now() + make_interval(secs => r.retention), now()) AS drop_at
    FROM (SELECT DISTINCT retention FROM done) r
)
INSERT INTO {s}.job_archive (id, queue, state, data, priority, run_at, attempt, retry_limit,
    retry_delay, retry_backoff, retry_delay_max, expire_in, retention, singleton_key,
    singleton_seconds, unique_key, dead_letter, group_key, depends_on, worker_id, created_at,
    started_at, finished_at, result, errors, progress, drop_at)
SELECT d.id, d.queue, 'completed', d.data, d.priority, d.run_at, d.attempt + 1, d.retry_limit,
       d.retry_delay, d.retry_backoff, d.retry_delay_max, d.expire_in, d.retention,
       d.singleton_key, d.singleton_seconds, d.unique_key, d.dead_letter, d.group_key,
       d.depends_on, gen_random_uuid(), d.created_at, now(), now(), NULL, d.errors, d.progress,
       r.drop_at
FROM done d JOIN routes r ON r.retention = d.retention;
"""


def pgbench_binary() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    if not found:
        sys.exit("bench: pgbench not found (apt-get install postgresql-client)")
    return found[-1]


def reset(dsn: str) -> Conveyor:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    app = Conveyor(dsn, schema=SCHEMA)
    app.migrate()
    return app


def pgbench(dsn: str, script: str, transactions: int) -> float:
    """Seconds pgbench takes to run ``script`` ``transactions`` times on one connection."""
    start = time.perf_counter()
    run_pgbench(dsn, script.format(s=SCHEMA, n=100), ["-c", "1", "-t", str(transactions)])
    return time.perf_counter() - start


def run_pgbench(dsn: str, script: str, options: list[str]) -> str:
    """What pgbench printed running ``script`` (a file's text) with ``options`` against
    ``dsn``'s database."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
        env = {**os.environ, "PGPASSWORD": str(params.get("password") or "")}
        cmd = [pgbench_binary(), "-n", *options, "-f", f.name]
        for flag, key in (("-h", "host"), ("-p", "port"), ("-U", "user")):
            if params.get(key):
                cmd += [flag, str(params[key])]
        cmd.append(str(params.get("dbname", "postgres")))
        return subprocess.run(cmd, check=True, capture_output=True, env=env, text=True).stdout
    finally:
        os.unlink(f.name)


def median_of(rounds: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(rounds))


def floor_insert_one(dsn: str, n: int) -> float:
    reset(dsn).close()
    return n / pgbench(dsn, INSERT_ONE, n)


def floor_insert_many(dsn: str, n: int) -> float:
    reset(dsn).close()
    return n / pgbench(dsn, INSERT_MANY, n // 100)


def floor_claim_complete(dsn: str, n: int) -> float:
    with reset(dsn) as app:
        app.send_batch([("floor", {"i": i}) for i in range(n)])
    return n / pgbench(dsn, CLAIM_COMPLETE, n // 100)


def conveyor_send(dsn: str, n: int) -> float:
    with reset(dsn) as app:
        for i in range(20):
            app.send("warm", {"i": i})
        start = time.perf_counter()
        for i in range(n):
            app.send("bench", {"i": i})
        return n / (time.perf_counter() - start)


def conveyor_send_batch(dsn: str, n: int, size: int) -> float:
    with reset(dsn) as app:
        app.send_batch([("warm", {"i": i}) for i in range(size)])
        batches = [[("bench", {"i": i}) for i in range(size)] for _ in range(max(1, n // size))]
        start = time.perf_counter()
        for batch in batches:
            app.send_batch(batch)
        return size * len(batches) / (time.perf_counter() - start)


def run_workers(dsn: str, mode: str, concurrency: int, processes: int) -> list[dict[str, Any]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.worker_proc", dsn, SCHEMA, mode, str(concurrency)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    return [json.loads(p.communicate(timeout=900)[0].strip().splitlines()[-1]) for p in procs]


def exactly_once(dsn: str, n: int, history: int = 0, future: int = 0) -> bool:
    """Every drained job completed once, on its first attempt, and only the future ones remain."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"SELECT count(*), count(*) FILTER (WHERE attempt = 1 AND state = 'completed'),"
            f" (SELECT count(*) FROM {SCHEMA}.job) FROM {SCHEMA}.job_history"
        ).fetchone()
    return row == (n + history, n + history, future)


SEED_HISTORY = """
INSERT INTO {s}.job_archive (id, queue, state, data, run_at, retry_limit, retry_delay,
    retry_backoff, expire_in, retention, created_at, finished_at, attempt, drop_at)
SELECT gen_random_uuid(), 'bench', 'completed', jsonb_build_object('i', g), now(), 2, 5,
       'exponential', 900, 604800, now(), now(), 1, r.drop_at
FROM generate_series(1, {n}) g,
     (SELECT {s}.archive_drop_at(now() + interval '604800 seconds', now()) AS drop_at) r
"""
SEED_FUTURE = """
INSERT INTO {s}.job (id, queue, data, run_at, retry_limit, retry_delay, retry_backoff,
    expire_in, retention, created_at)
SELECT gen_random_uuid(), 'bench', jsonb_build_object('i', g), now() + interval '1 day', 2, 5,
       'exponential', 900, 604800, now()
FROM generate_series(1, {n}) g
"""


def seed_large_tables(dsn: str, history: int, future: int) -> None:
    """Finished jobs in the history and jobs scheduled for tomorrow: what a busy system carries."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SEED_HISTORY.format(s=SCHEMA, n=history))
        conn.execute(SEED_FUTURE.format(s=SCHEMA, n=future))
        conn.execute(f"VACUUM ANALYZE {SCHEMA}.job")
        conn.execute(f"VACUUM ANALYZE {SCHEMA}.job_archive")


def conveyor_drain(
    dsn: str,
    n: int,
    concurrency: int,
    processes: int,
    *,
    large: bool = False,
    limited: bool = False,
    keep_none: bool = False,
) -> tuple[float, float]:
    """Jobs/s draining n pre-loaded no-op jobs, and the peak RSS (MB) of a worker process.
    With ``large``, 1,000,000 finished jobs and 100,000 future ones sit in the tables too; with
    ``limited`` the queue has a concurrency limit that never binds (what a limit costs); with
    ``keep_none`` the queue keeps no history (retention 0: the ack deletes the row)."""
    with reset(dsn) as app:
        if limited:
            app.create_queue("bench", concurrency=10_000)
        if keep_none:
            app.create_queue("bench", retention=0)
        if large:
            seed_large_tables(dsn, 1_000_000, 100_000)
        app.send_batch([("bench", {"i": i}) for i in range(n)])
    start = time.perf_counter()
    results = run_workers(dsn, "drain", concurrency, processes)
    elapsed = time.perf_counter() - start
    if keep_none:
        if sum(r["ran"] for r in results) != n or not exactly_once(dsn, 0):
            sys.exit("bench: drain (retention 0) lost or repeated jobs, or kept history")
    elif not exactly_once(dsn, n, 1_000_000 if large else 0, 100_000 if large else 0):
        sys.exit(f"bench: drain lost or repeated jobs (concurrency {concurrency})")
    work = max(r["seconds"] for r in results)  # excludes interpreter start-up
    del elapsed
    return n / work, max(r["rss_mb"] for r in results)


@contextlib.contextmanager
def serving_worker(dsn: str) -> Iterator[None]:
    """A worker process (concurrency 10) serving the bench queue, stopped with SIGTERM."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.worker_proc", dsn, SCHEMA, "serve", "10"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # up, listening and idle
        yield
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)


def latencies(conn: psycopg.Connection[Any]) -> list[float]:
    """Created-to-started milliseconds of every finished bench job, sorted."""
    rows = conn.execute(
        f"SELECT extract(epoch FROM started_at - created_at) * 1000 FROM {SCHEMA}.job_history"
    ).fetchall()
    return sorted(float(r[0]) for r in rows)


def conveyor_latency(dsn: str, n: int) -> tuple[float, float, float]:
    """Enqueue-to-start latency (ms) with an idle worker woken by NOTIFY: p50, p95, p99."""
    reset(dsn).close()
    with serving_worker(dsn), Conveyor(dsn, schema=SCHEMA) as app:
        for i in range(n):
            app.send("bench", {"i": i})
            time.sleep(0.01)
        time.sleep(0.5)
    with psycopg.connect(dsn) as conn:
        values = latencies(conn)
    if len(values) != n:
        sys.exit(f"bench: latency run completed {len(values)} of {n} jobs")
    quantiles = statistics.quantiles(values, n=100)
    return quantiles[49], quantiles[94], quantiles[98]


def conveyor_steady(dsn: str, rate: int, seconds: float) -> dict[str, float]:
    """A producer sends ``rate`` jobs/s (batches every 10 ms) for ``seconds`` while one worker
    process runs them: the backlog at the start and end of the second half, and the latency
    (created to started) percentiles of every job."""
    reset(dsn).close()
    backlog: list[tuple[float, int]] = []
    with (
        serving_worker(dsn),
        Conveyor(dsn, schema=SCHEMA) as app,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        per_tick = max(1, rate // 100)
        start = time.perf_counter()
        tick = sent = 0
        while (now := time.perf_counter() - start) < seconds:
            app.send_batch([("bench", {"i": sent + k}) for k in range(per_tick)])
            sent += per_tick
            tick += 1
            if tick % 100 == 0:
                row = conn.execute(
                    f"SELECT count(*) FROM {SCHEMA}.job WHERE state IN ('created', 'retry')"
                ).fetchone()
                backlog.append((now, int(row[0]) if row else 0))
            pause = tick * 0.01 - (time.perf_counter() - start)
            if pause > 0:
                time.sleep(pause)
        achieved = sent / (time.perf_counter() - start)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = conn.execute(f"SELECT count(*) FROM {SCHEMA}.job").fetchone()
            if left and left[0] == 0:
                break
            time.sleep(0.2)
        values = latencies(conn)
    if len(values) != sent:
        sys.exit(f"bench: steady run completed {len(values)} of {sent} jobs")
    q = statistics.quantiles(values, n=100)
    half = [b for t, b in backlog if t >= seconds / 2]
    return {
        "rate": achieved,
        "p50": q[49],
        "p99": q[98],
        "backlog_mid": float(half[0]) if half else 0.0,
        "backlog_end": float(half[-1]) if half else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("CONVEYOR_BENCH_DSN", LOCAL_TEST_DSN))
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round, 5,000 jobs")
    parser.add_argument("--steady-rate", type=int, default=5000, help="jobs/s for the steady run")
    parser.add_argument("--steady-seconds", type=float, default=60.0)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.jobs, args.sends = 1, 5000, 500
    dsn, n, r = args.dsn, args.jobs, args.rounds

    rows: list[tuple[str, float, float, str]] = []

    def add(name: str, value: float, floor: float, unit: str = "jobs/s") -> None:
        rows.append((name, value, floor, unit))
        print(f"  {name}: {value:,.0f} {unit} (floor {floor:,.0f}, {value / floor:.2f}x)",
              flush=True)  # fmt: skip

    print(f"bench: {n} jobs, {r} round(s), {os.cpu_count()} cores", flush=True)
    one = median_of(r, lambda: floor_insert_one(dsn, args.sends))
    add("send, 1 per call", median_of(r, lambda: conveyor_send(dsn, args.sends)), one)
    many = median_of(r, lambda: floor_insert_many(dsn, n))
    add("send_batch, 100 per call", median_of(r, lambda: conveyor_send_batch(dsn, n, 100)), many)
    add("send_batch, 10,000 per call",
        median_of(r, lambda: conveyor_send_batch(dsn, 10_000, 10_000)), many)  # fmt: skip
    claim = median_of(r, lambda: floor_claim_complete(dsn, n))
    peak = 0.0
    drained: dict[tuple[int, int], float] = {}
    for concurrency, processes in ((10, 1), (50, 1), (10, 2)):
        results = [conveyor_drain(dsn, n, concurrency, processes) for _ in range(r)]
        peak = max(peak, max(m for _, m in results))
        label = f"drain, {processes} process{'es' if processes > 1 else ''} x {concurrency}"
        drained[(concurrency, processes)] = statistics.median(v for v, _ in results)
        add(label, drained[(concurrency, processes)], claim)
    limited = statistics.median(conveyor_drain(dsn, n, 10, 1, limited=True)[0] for _ in range(r))
    add("drain, 1 x 10, queue with a concurrency limit", limited, claim)
    print(f"  a limit costs: {limited / drained[(10, 1)]:.2f}x the unlimited drain", flush=True)
    if not args.quick:
        flat = statistics.median(conveyor_drain(dsn, n, 10, 1, large=True)[0] for _ in range(r))
        add("drain, 1 x 10, with 1M finished + 100k future jobs", flat, claim)
        print(f"  flat cost: {flat / drained[(10, 1)]:.2f}x the empty-table drain", flush=True)
    p50, p95, p99 = conveyor_latency(dsn, 300 if not args.quick else 100)
    print(f"  enqueue->start latency: p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms")
    print(f"  worker peak RSS: {peak:.0f} MB")
    steady_seconds = 10.0 if args.quick else args.steady_seconds
    steady = conveyor_steady(dsn, args.steady_rate, steady_seconds)
    print(
        f"  steady: sent {steady['rate']:,.0f} jobs/s for {steady_seconds:g}s; backlog "
        f"{steady['backlog_mid']:.0f} at half time, {steady['backlog_end']:.0f} at the end; "
        f"latency p50 {steady['p50']:.2f} ms, p99 {steady['p99']:.2f} ms",
        flush=True,
    )
    print("  exactly once: every drained job completed on its first attempt, none left")

    print("\n| figure | Conveyor | floor (pgbench) | ratio |\n|---|---:|---:|---:|")
    for name, value, floor, unit in rows:
        print(f"| {name} | {value:,.0f} {unit} | {floor:,.0f} | {value / floor:.2f}x |")
    print(f"| enqueue->start p50 / p95 / p99 | {p50:.2f} / {p95:.2f} / {p99:.2f} ms | - | - |")
    print(f"| worker peak RSS | {peak:.0f} MB | - | - |")
    print(
        f"| steady {steady['rate']:,.0f} jobs/s: backlog mid / end, p50 / p99 |"
        f" {steady['backlog_mid']:.0f} / {steady['backlog_end']:.0f} jobs,"
        f" {steady['p50']:.2f} / {steady['p99']:.2f} ms | - | - |"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


if __name__ == "__main__":
    main()
