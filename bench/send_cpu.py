"""CPU per job of ``send`` and ``send_batch``, client and database apart, A/B against a baseline.

    .venv/bin/python -m bench.send_cpu --baseline COMMIT [--current COMMIT] [--rounds 3]
        [--sends 2000] [--jobs 30000]

Throughput of a send on a shared 2-core machine is mostly waiting (for the server, the WAL
flush, the scheduler); the CPU a send costs moves much less. Each round runs, for the baseline
and the current tree in turn (the order alternating by round), one subprocess importing that
tree's ``conveyor``: on a fresh schema it sends ``--sends`` jobs one per call (sync ``send``,
autocommit), then ``--jobs`` jobs in batches of 100 and of 10,000, and reports per job the
client process's CPU (user + system), the CPU of its database backend (``/proc/<pid>/stat``,
so PostgreSQL must run on this machine) and the rate. Medians over the rounds, and the median
of each round's current/baseline ratio. The schema is ``$CONVEYOR_BENCH_SCHEMA`` (default
``conveyor_send_cpu``).
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
SCHEMA = os.environ.get("CONVEYOR_BENCH_SCHEMA", "conveyor_send_cpu")
CASES = ("one", "batch_100", "batch_10000")


def child(dsn: str, sends: int, jobs: int) -> None:
    """In the tree under test: measure each case, print one JSON line."""
    import resource
    import time

    import psycopg

    from conveyor import Conveyor

    def backend_cpu() -> float:
        with psycopg.connect(dsn, autocommit=True) as conn:
            found = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                (f"conveyor {SCHEMA}",),
            ).fetchall()
        total = 0
        for (pid,) in found:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(stat[11]) + int(stat[12])
        return total / os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        used = resource.getrusage(resource.RUSAGE_SELF)
        return used.ru_utime + used.ru_stime

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    out: dict[str, Any] = {}
    # One pooled connection: its backend is the one measured.
    with Conveyor(dsn, schema=SCHEMA, pool_min_size=1, pool_max_size=1) as app:
        app.migrate()
        for i in range(50):
            app.send("warm", {"i": i})
        app.send_batch([("warm", {"i": i}) for i in range(1000)])
        for case in CASES:
            if case == "one":
                n = sends

                def work() -> None:
                    for i in range(sends):
                        app.send("bench", {"i": i})

            else:
                size = int(case.split("_")[1])
                batches = [[("bench", {"i": i}) for i in range(size)] for _ in range(jobs // size)]
                n = size * len(batches)

                def work(batches: list[list[tuple[str, Any]]] = batches) -> None:
                    for batch in batches:
                        app.send_batch(batch)

            before, db_before, start = cpu(), backend_cpu(), time.perf_counter()
            work()
            seconds = time.perf_counter() - start
            client, db = cpu() - before, backend_cpu() - db_before
            out[case] = {
                "rate": n / seconds,
                "client_us": client / n * 1e6,
                "database_us": db / n * 1e6,
            }
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    print(json.dumps(out))


def run(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{ROOT}"}
    cmd = [sys.executable, "-m", "bench.send_cpu", "--child", "--dsn", args.dsn,
           "--sends", str(args.sends), "--jobs", str(args.jobs)]  # fmt: skip
    out = subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="the commit to compare against")
    parser.add_argument("--current", help="a commit for B (default: this working tree)")
    parser.add_argument("--dsn", default=os.environ.get("CONVEYOR_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--sends", type=int, default=2000, help="jobs sent one per call")
    parser.add_argument("--jobs", type=int, default=30_000, help="jobs per batch size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write every raw number here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.dsn, args.sends, args.jobs)
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
                shown = "; ".join(
                    f"{case} {v['rate']:,.0f}/s client {v['client_us']:.1f} us "
                    f"db {v['database_us']:.1f} us"
                    for case, v in found.items()
                )
                print(f"round {r + 1} {name}: {shown}", flush=True)
    print(
        "\n| per job (median of rounds) | baseline | current | ratio (paired) |\n"
        "|---|---:|---:|---:|"
    )
    for case in CASES:
        for key, label in (
            ("client_us", "client CPU, us"),
            ("database_us", "database CPU, us"),
            ("both", "client + database CPU, us"),
            ("rate", "jobs/s (shared machine)"),
        ):

            def value(run: dict[str, Any], key: str = key, case: str = case) -> float:
                v = run[case]
                return float(v["client_us"] + v["database_us"] if key == "both" else v[key])

            a = statistics.median(value(x) for x in results["baseline"])
            b = statistics.median(value(x) for x in results["current"])
            paired = statistics.median(
                value(y) / value(x)
                for x, y in zip(results["baseline"], results["current"], strict=True)
            )
            print(f"| {case}: {label} | {a:,.1f} | {b:,.1f} | {b / a:.2f}x ({paired:.2f}x) |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
