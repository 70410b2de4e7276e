"""Fair share across tenants (issue 16, item 4): what a fair queue costs and what it buys.

    .venv/bin/python -m bench.fair [--dsn DSN] [--jobs 100000] [--rounds 3] [--probes 20]

Two measurements, on a fresh schema each time, with tenant A holding ``--jobs`` queued no-op
jobs (fair_key "A") in the queue ``bench``:

- **drain**: one worker process (concurrency 10, as bench.run's drain) drains them, the queue
  fair and not (the same jobs; an unfair queue ignores the key), in alternating rounds; jobs/s,
  medians, and their ratio; and the CPU per job of the worker process and of the database
  backends serving it (as bench.cpu reads it: steadier than throughput on a shared machine).
  Every job must have completed once, on its first attempt.
- **latency**: while a worker process (concurrency 10) drains A's jobs at full speed, tenant B
  sends one job at a time (``--probes`` of them, 100 ms apart); how long each waited from its
  send to its claim (``started_at``) and to its handler's start. The same with the queue not
  fair, where B's jobs wait behind the flood.

Prints a JSON document and a table; the machine's load average is in both.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg

from bench.backends import backend_cpu
from bench.run import ROOT, SCHEMA, reset, run_workers
from conveyor import Conveyor
from conveyor.testing import LOCAL_TEST_DSN


def seed(dsn: str, n: int, fair: bool) -> None:
    """A fresh schema whose queue ``bench`` (fair or not) holds n jobs of tenant A."""
    with reset(dsn) as app:
        app.create_queue("bench", fair=fair)
        for start in range(0, n, 10_000):
            app.send_batch(
                [
                    ("bench", {"i": i}, {"fair_key": "A"})
                    for i in range(start, min(n, start + 10_000))
                ]
            )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"VACUUM ANALYZE {SCHEMA}.job")


def drain(dsn: str, n: int, fair: bool) -> dict[str, float]:
    """One worker process (concurrency 10) draining the n jobs: jobs/s, and CPU per job (us)
    of the worker process and of the database backends serving it."""
    seed(dsn, n, fair)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with backend_cpu(dsn, SCHEMA) as ticks:
        result = run_workers(dsn, "drain", 10, 1)[0]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    database = sum(ticks.values()) / os.sysconf("SC_CLK_TCK")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"SELECT count(*), count(*) FILTER (WHERE attempt = 1 AND state = 'completed'),"
            f" (SELECT count(*) FROM {SCHEMA}.job) FROM {SCHEMA}.job_history"
        ).fetchone()
    if row != (n, n, 0):
        sys.exit(f"bench.fair: the drain lost or repeated jobs: {row}")
    return {
        "rate": n / float(result["seconds"]),
        "worker_us": worker / n * 1e6,
        "database_us": database / n * 1e6,
    }


@contextlib.contextmanager
def serving_worker(dsn: str) -> Iterator[None]:
    """A worker process (concurrency 10) serving the bench queue, stopped with SIGTERM."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "bench.fair_worker", dsn, SCHEMA, "10"], cwd=ROOT, text=True
    )
    try:
        time.sleep(1.5)  # up, and draining A's jobs
        yield
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=120)


def latency(dsn: str, n: int, fair: bool, probes: int) -> dict[str, Any]:
    """How long B's jobs, sent while A's n jobs drain at full speed, waited: from the send's
    transaction to the claim (started_at, the database's clock) and to the handler's start (the
    wall clock it returned; the same host's clock)."""
    seed(dsn, n, fair)
    ids = []
    with serving_worker(dsn), Conveyor(dsn, schema=SCHEMA) as app:
        backlog_at_first = app.queue_stats("bench").queued
        for i in range(probes):
            ids.append(app.send("bench", {"tenant": "B", "i": i}, fair_key="B"))
            time.sleep(0.1)
        deadline = time.monotonic() + 600
        while any(not app.get_job(i).state.is_terminal for i in ids):
            if time.monotonic() > deadline:
                sys.exit("bench.fair: B's jobs did not finish within 10 minutes")
            time.sleep(0.05)
        jobs = [app.get_job(i) for i in ids]
    claimed = sorted((j.started_at - j.created_at).total_seconds() * 1000 for j in jobs)
    started = sorted((j.result - j.created_at.timestamp()) * 1000 for j in jobs)
    return {
        "backlog_when_b_sent_first": backlog_at_first,
        "claimed_ms_p50": statistics.median(claimed),
        "claimed_ms_max": claimed[-1],
        "started_ms_p50": statistics.median(started),
        "started_ms_max": started[-1],
        "started_ms": [round(w, 2) for w in started],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("CONVEYOR_TEST_DSN", LOCAL_TEST_DSN))
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    load_before = os.getloadavg()
    drains: dict[str, list[dict[str, float]]] = {"unfair": [], "fair": []}
    for _ in range(args.rounds):
        for mode in ("unfair", "fair"):
            got = drain(args.dsn, args.jobs, mode == "fair")
            drains[mode].append(got)
            print(f"drain {mode}: {got['rate']:,.0f} jobs/s, worker {got['worker_us']:.1f} "
                  f"us/job, database {got['database_us']:.1f} us/job",
                  file=sys.stderr, flush=True)  # fmt: skip
    rates = {mode: [d["rate"] for d in drains[mode]] for mode in drains}
    cpu = {mode: [d["worker_us"] + d["database_us"] for d in drains[mode]] for mode in drains}
    waits = {mode: latency(args.dsn, args.jobs, mode == "fair", args.probes)
             for mode in ("fair", "unfair")}  # fmt: skip
    load_after = os.getloadavg()

    # --rounds 0 measures the latency alone.
    unfair = statistics.median(rates["unfair"]) if rates["unfair"] else float("nan")
    fair = statistics.median(rates["fair"]) if rates["fair"] else float("nan")
    out = {
        "jobs": args.jobs,
        "rounds": args.rounds,
        "drain_jobs_per_s": {"unfair": rates["unfair"], "fair": rates["fair"]},
        "drain_median": {"unfair": unfair, "fair": fair, "fair_cost": unfair / fair - 1},
        "drain_rounds": drains,
        "drain_paired_ratio": [u / f for u, f in zip(rates["unfair"], rates["fair"], strict=True)],
        "cpu_us_per_job_median": {
            mode: statistics.median(cpu[mode]) if cpu[mode] else float("nan") for mode in cpu
        },
        "b_wait": waits,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    print(json.dumps(out, indent=2))
    print(f"| drain, 1 process x 10, jobs/s (median of {args.rounds}) | {unfair:,.0f} | "
          f"{fair:,.0f} | fair costs {100 * (unfair / fair - 1):+.1f}% |")  # fmt: skip
    if args.rounds:
        a, b = (statistics.median(cpu[m]) for m in ("unfair", "fair"))
        print(f"| drain, worker + database CPU per job, us (median) | {a:,.1f} | {b:,.1f} | "
              f"fair costs {100 * (b / a - 1):+.1f}% |")  # fmt: skip
    for mode in ("fair", "unfair"):
        w = waits[mode]
        print(
            f"| B's job, send to handler start, {mode} queue, ms | p50 "
            f"{w['started_ms_p50']:,.1f} | max {w['started_ms_max']:,.1f} | (claimed: p50 "
            f"{w['claimed_ms_p50']:,.1f}, max {w['claimed_ms_max']:,.1f}) |"
        )
    print(f"load average before {load_before}, after {load_after}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
