"""CPU per job of a drain, worker and database apart, A/B against a baseline commit.

    .venv/bin/python -m bench.cpu --baseline COMMIT [--current COMMIT] [--jobs 20000]
        [--rounds 3] [--retention SECONDS] [--sync]

Throughput on a shared 2-core machine moves with whatever else runs; the CPU time a drain costs
moves much less. Each round drains ``--jobs`` pre-loaded no-op jobs (one worker, concurrency 10,
in a subprocess importing each tree's ``conveyor``) for the baseline and the current tree in
turn, and reports per job: the worker process's CPU (user + system) and the CPU of the database
backends serving it (their ``/proc/<pid>/stat``, found by the schema in their application_name;
so PostgreSQL must run on this machine). Medians over the rounds. ``--sync`` drains with a
``def`` handler (run on the worker's threads) instead of an ``async def`` one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.ab import DEFAULT_DSN, _current, worktree

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = os.environ.get("CONVEYOR_BENCH_SCHEMA", "conveyor_cpu")  # one per checkout


def child(dsn: str, jobs: int, retention: float | None, sync: bool) -> None:
    """In the tree under test: fill the schema, drain it, print one JSON line."""
    import resource
    import time

    import psycopg

    from bench.backends import backend_cpu
    from conveyor import Conveyor, Job

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    with Conveyor(dsn, schema=SCHEMA) as setup:
        setup.migrate()
        if retention is not None:
            setup.create_queue("bench", retention=retention)
        for start in range(0, jobs, 10_000):
            setup.send_batch([("bench", {"i": i}) for i in range(start, min(jobs, start + 10_000))])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    app = Conveyor(dsn, schema=SCHEMA)

    if sync:

        @app.job("bench")
        def sync_noop(job: Job) -> None:
            return None

    else:

        @app.job("bench")
        async def noop(job: Job) -> None:
            return None

    ticks = os.sysconf("SC_CLK_TCK")
    with backend_cpu(dsn, SCHEMA) as seen:
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        ran = app.drain(concurrency=10)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    app.close()
    worker = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({
        "ran": ran, "rate": ran / elapsed, "worker_us": worker / ran * 1e6,
        "database_us": sum(seen.values()) / ticks / ran * 1e6, "backends": len(seen),
    }))  # fmt: skip


def run(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, "-m", "bench.cpu", "--child", "--dsn", args.dsn,
           "--jobs", str(args.jobs)]  # fmt: skip
    if args.retention is not None:
        cmd += ["--retention", str(args.retention)]
    if args.sync:
        cmd.append("--sync")
    out = subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if found["ran"] != args.jobs:
        sys.exit(f"bench.cpu: {found['ran']} of {args.jobs} jobs ran")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="the commit to compare against")
    parser.add_argument("--current", help="a commit for B (default: this working tree)")
    parser.add_argument("--dsn", default=os.environ.get("CONVEYOR_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--retention", type=float, help="the queue's retention (0: keep none)")
    parser.add_argument("--sync", action="store_true", help="a sync (def) no-op handler")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.dsn, args.jobs, args.retention, args.sync)
        return
    if args.baseline is None:
        parser.error("--baseline is required")
    results: dict[str, list[dict[str, Any]]] = {"baseline": [], "current": []}
    with worktree(args.baseline) as base, _current(args.current) as cur:
        for r in range(args.rounds):
            order = [("baseline", base), ("current", cur)]
            for name, tree in order if r % 2 == 0 else order[::-1]:
                found = run(tree, args)
                results[name].append(found)
                print(f"round {r + 1} {name}: {found['rate']:,.0f} jobs/s, worker "
                      f"{found['worker_us']:.1f} us/job, database {found['database_us']:.1f} "
                      f"us/job", flush=True)  # fmt: skip
    print("\n| per job (median) | baseline | current | ratio |\n|---|---:|---:|---:|")
    for key, label in (("worker_us", "worker CPU, us"), ("database_us", "database CPU, us"),
                       ("rate", "drain, jobs/s (shared machine)")):  # fmt: skip
        a = statistics.median(x[key] for x in results["baseline"])
        b = statistics.median(x[key] for x in results["current"])
        print(f"| {label} | {a:,.1f} | {b:,.1f} | {b / a:.2f}x |")
    both = [
        statistics.median(x["worker_us"] + x["database_us"] for x in results[k])
        for k in ("baseline", "current")
    ]
    print(f"| worker + database CPU, us | {both[0]:,.1f} | {both[1]:,.1f} | "
          f"{both[1] / both[0]:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
