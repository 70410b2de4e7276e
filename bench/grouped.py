"""The claim's cost when grouped jobs (group_key) wait ahead of ungrouped ones, A/B against a
baseline commit.

    .venv/bin/python -m bench.grouped --baseline COMMIT [--current COMMIT] [--grouped 10000]
        [--groups 1,100,10000] [--rounds 3] [--claims 40]

Two measures per group shape (``--grouped`` jobs spread over ``--groups`` groups):

- **ungrouped behind grouped**: queue ``mixed`` holds the grouped jobs, sent first (so they stand
  ahead in the fetch order), then 10,000 ungrouped ones; each of ``--claims`` claims of 100 jobs
  (``job_fetch``, the statement a worker runs) is measured, then acknowledged (``job_ack_many``,
  not measured). Every claim is filled by ungrouped jobs, so it never needs a group head.
- **group heads**: queue ``grouped`` holds only the grouped jobs; each claim of 100 takes at most
  one head per group (one group: one job) and is measured likewise, then acknowledged.

A claim is measured by its execution time in the server and the shared buffers it touched
(``EXPLAIN (ANALYZE, BUFFERS)`` of the statement, which counts its function's statements too):
the buffers do not move with the load of a shared machine, and say how much of the index a claim
walked.

Each child runs in a subprocess importing its tree's ``conveyor`` (``PYTHONPATH=<tree>/src``),
migrates a fresh schema (``CONVEYOR_BENCH_SCHEMA``, default ``bench_grouped``) and reports the
median claim time of each measure. Trees alternate, round after round; the table gives the
medians of the rounds and their ratio.
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
SCHEMA = os.environ.get("CONVEYOR_BENCH_SCHEMA", "bench_grouped")
UNGROUPED = 10_000
LIMIT = 100


def child(dsn: str, grouped: int, groups: int, claims: int) -> None:
    """In the tree under test: fill the schema, time the claims, print one JSON line."""
    import time
    import uuid

    import psycopg
    from psycopg.rows import dict_row

    from conveyor import Conveyor
    from conveyor._store.queries import queries

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    with Conveyor(dsn, schema=SCHEMA) as setup:
        setup.migrate()
        for queue in ("mixed", "grouped"):
            jobs = [(queue, {"i": i}, {"group_key": f"g{i % groups}"}) for i in range(grouped)]
            for start in range(0, grouped, 10_000):
                setup.send_batch(jobs[start : start + 10_000])
        setup.send_batch([("mixed", {"i": i}) for i in range(UNGROUPED)])
    named = queries(SCHEMA)
    out: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(f"VACUUM ANALYZE {SCHEMA}.job")
        conn.execute("CHECKPOINT")
        for queue in ("mixed", "grouped"):
            walls: list[float] = []
            server: list[float] = []
            buffers: list[int] = []
            taken = 0
            for _ in range(claims):
                worker = uuid.uuid4()
                start = time.perf_counter()
                # The worker's statement, under EXPLAIN ANALYZE for the buffers it touched and
                # its time in the server (the function's own statements included).
                plan = conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF, FORMAT JSON) " + named["job_fetch"].sql,
                    {"queues": [queue], "worker": worker, "limit": LIMIT, "now": None},
                ).fetchone()
                walls.append((time.perf_counter() - start) * 1000)
                assert plan is not None
                top = next(iter(plan.values()))[0]
                server.append(top["Execution Time"])
                buffers.append(top["Plan"]["Shared Hit Blocks"] + top["Plan"]["Shared Read Blocks"])
                got = conn.execute(
                    f"SELECT id, attempt, group_key FROM {SCHEMA}.job"
                    " WHERE queue = %s AND state = 'active' AND worker_id = %s",
                    (queue, worker),
                ).fetchall()
                taken += len(got)
                n = len(got)
                if queue == "mixed" and any(r["group_key"] is not None for r in got):
                    sys.exit("bench.grouped: a claim of the mixed queue took grouped jobs")
                conn.execute(
                    named["job_ack_many"].sql,
                    {
                        "id": [r["id"] for r in got],
                        "worker": [worker] * n,
                        "attempt": [r["attempt"] for r in got],
                        "outcome": ["completed"] * n,
                        "result": [None] * n,
                        "error": [None] * n,
                        "delay": [None] * n,
                        "now": None,
                    },
                )
            out[queue] = {
                "claim_ms": statistics.median(walls),
                "server_ms": statistics.median(server),
                "buffers": statistics.median(buffers),
                "jobs_per_claim": taken / claims,
            }
    print(json.dumps(out))


def run(tree: Path, args: argparse.Namespace, groups: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, "-m", "bench.grouped", "--child", "--dsn", args.dsn,
           "--grouped", str(args.grouped), "--groups", str(groups),
           "--claims", str(args.claims)]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="the commit to compare against")
    parser.add_argument("--current", help="a commit for B (default: this working tree)")
    parser.add_argument("--dsn", default=os.environ.get("CONVEYOR_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--grouped", type=int, default=10_000)
    parser.add_argument("--groups", default="1,100,10000", help="comma-separated group counts")
    parser.add_argument("--claims", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.dsn, args.grouped, int(args.groups), args.claims)
        return
    if args.baseline is None:
        parser.error("--baseline is required")
    shapes = [int(g) for g in args.groups.split(",")]
    results: dict[tuple[int, str], list[dict[str, Any]]] = {}
    with worktree(args.baseline) as base, _current(args.current) as cur:
        for r in range(args.rounds):
            for groups in shapes:
                order = [("baseline", base), ("current", cur)]
                for name, tree in order if r % 2 == 0 else order[::-1]:
                    found = run(tree, args, groups)
                    results.setdefault((groups, name), []).append(found)
                    print(f"round {r + 1} groups {groups} {name}: " + ", ".join(
                        f"{q} {found[q]['server_ms']:.2f} ms {found[q]['buffers']:.0f} buffers"
                        for q in ("mixed", "grouped")) +
                        f" ({found['grouped']['jobs_per_claim']:.0f} grouped jobs/claim)",
                        flush=True)  # fmt: skip
    print(f"\n{args.grouped} grouped jobs; claims of {LIMIT}; medians of {args.rounds} rounds "
          f"(each the median of {args.claims} claims). ms: the claim's execution time in the "
          "server; buffers: shared buffers it touched\n")  # fmt: skip
    print("| groups | claim | baseline ms | current ms | ratio | baseline buffers | "
          "current buffers | ratio |\n|---:|---|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    for groups in shapes:
        for queue, label in (("mixed", "100 ungrouped behind grouped"),
                             ("grouped", "group heads")):  # fmt: skip
            row = [f"| {groups:,} | {label}"]
            for key, fmt in (("server_ms", ".2f"), ("buffers", ".0f")):
                a = statistics.median(x[queue][key] for x in results[(groups, "baseline")])
                b = statistics.median(x[queue][key] for x in results[(groups, "current")])
                row.append(f"{a:{fmt}} | {b:{fmt}} | {b / a:.2f}x" if a else f"{a} | {b} | -")
            print(" | ".join(row) + " |")


if __name__ == "__main__":
    main()
