"""Load test: sustained send + work at 80% of the measured peak. (Not run in CI.)

    .venv/bin/python -m bench.load [--dsn DSN] [--minutes 15] [--share 0.8] [--sample 30]

First it measures the peak: how fast one worker process (concurrency 10) drains 20,000
pre-loaded jobs (the median of three drains). Then a producer sends ``--share`` of that rate
while the same kind of worker runs them, maintenance on, for ``--minutes``. Every ``--sample``
seconds it prints the latency percentiles of the jobs that started in that window (from
``run_at`` to their claim and to their handler's start, as the worker saw them), the live
table's and its indexes' sizes, its dead tuples, the history's size, the backlog and the
throughput, with the worst lag of the worker's event loop in that window and the window's end
in UTC (to find what the server logged then). At the end it says whether latency and sizes
stayed flat (last third against the first third), and gives each figure's slope per minute over
the last 10 minutes (or the last half of a shorter run).
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import psycopg

from bench.run import conveyor_drain
from bench.soak import FINISHED, MB, SCHEMA, Sampled, reset, steady
from conveyor.testing import LOCAL_TEST_DSN

SAMPLE = f"""
SELECT pg_total_relation_size('{SCHEMA}.job'), pg_indexes_size('{SCHEMA}.job'),
       (SELECT n_dead_tup FROM pg_stat_user_tables
        WHERE schemaname = '{SCHEMA}' AND relname = 'job'),
       (SELECT sum(pg_total_relation_size(t.relid))::bigint
        FROM pg_partition_tree('{SCHEMA}.job_archive') t)
         + pg_total_relation_size('{SCHEMA}.job_dead'),
       (SELECT count(*) FROM {SCHEMA}.job WHERE state IN ('created', 'retry')),
       {FINISHED},
       (SELECT count(*) FROM pg_partition_tree('{SCHEMA}.job_archive') WHERE isleaf)
"""
HEADER = (
    "| minute | claimed p50 / p95 / p99 ms | started p50 / p99 ms | live table | live indexes "
    "| live dead tuples | history (partitions) | backlog | finished jobs/s | worker RSS "
    "| worker CPU | DB CPU | worst loop lag ms | at (UTC) |"
)


def take_load(conn: psycopg.Connection[Any]) -> Sampled:
    """The load test's figures from the database: sizes, dead tuples, backlog. (The latency
    percentiles come from the worker's own reports.)"""
    found = conn.execute(SAMPLE).fetchone()
    assert found is not None
    live, indexes, dead, history, backlog, finished, partitions = found
    row = {
        "live_mb": live / MB,
        "index_mb": indexes / MB,
        "dead": int(dead or 0),
        "history_mb": history / MB,
        "backlog": int(backlog),
        "partitions": int(partitions),
    }
    return row, int(finished or 0)


def show_load(row: dict[str, Any]) -> str:
    """One line of the load test's table."""
    return (
        f"| {row['minute']:.1f} "
        f"| {row.get('p50', 0):.1f} / {row.get('p95', 0):.1f} / {row.get('p99', 0):.1f} "
        f"| {row.get('start_p50', 0):.1f} / {row.get('start_p99', 0):.1f} "
        f"| {row['live_mb']:.2f} MB | {row['index_mb']:.2f} MB | {row['dead']:,} "
        f"| {row['history_mb']:.1f} MB ({row['partitions']}) | {row['backlog']:,} "
        f"| {row['throughput']:,.0f} | {row.get('worker_rss_mb', 0):.0f} MB "
        f"| {row.get('worker_cpu', 0):.0%} | {row.get('db_cpu', 0):.0%} "
        f"| {row.get('loop_lag', 0):.0f} | {clock(row.get('at'))} |"
    )


def clock(at: float | None) -> str:
    """A window's end as the server log writes times (UTC), to find what it logged then."""
    return "-" if at is None else datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")


def flat(rows: list[dict[str, Any]]) -> str:
    """Each figure's mean over the last third of the run against the first third."""
    third = max(1, len(rows) // 3)
    first, last = rows[1 : third + 1] or rows[:1], rows[-third:]
    parts = []
    for key, name in (("p50", "p50"), ("p99", "p99"), ("live_mb", "live table"),
                      ("index_mb", "live indexes"), ("history_mb", "history"),
                      ("backlog", "backlog")):  # fmt: skip
        a = sum(r.get(key, 0.0) for r in first) / len(first)
        b = sum(r.get(key, 0.0) for r in last) / len(last)
        grew = b > 1.5 * a and b - a > (1.0 if key in ("p50", "p99") else 0.5)
        parts.append(f"{name} {a:,.2f} -> {b:,.2f}{' GREW' if grew else ''}")
    return "; ".join(parts)


def slopes(rows: list[dict[str, Any]], minutes: float) -> str:
    """Each figure's least-squares slope per minute over the last ``minutes`` of the run, beside
    its mean there: a figure that holds has a slope near 0 against its mean."""
    end = rows[-1]["minute"] if rows else 0.0
    tail = [r for r in rows if r["minute"] >= end - minutes]
    if len(tail) < 3:
        return "too short for slopes"
    xs = [r["minute"] for r in tail]
    mx = sum(xs) / len(xs)
    sxx = sum((x - mx) ** 2 for x in xs)
    parts = []
    for key, name, unit in (("p50", "p50", "ms"), ("p99", "p99", "ms"),
                            ("live_mb", "live table", "MB"), ("index_mb", "live indexes", "MB"),
                            ("history_mb", "history", "MB"), ("backlog", "backlog", "jobs"),
                            ("throughput", "finished", "jobs/s"),
                            ("worker_rss_mb", "worker RSS", "MB"),
                            ("worker_cpu", "worker CPU", "cores"),
                            ("db_cpu", "PostgreSQL CPU", "cores")):  # fmt: skip
        ys = [r.get(key, 0.0) for r in tail]
        my = sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
        parts.append(f"{name} {slope:+,.3f} {unit}/min (mean {my:,.2f})")
    return f"slopes over the last {minutes:g} min: " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=LOCAL_TEST_DSN)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--share", type=float, default=0.8, help="of the measured peak")
    parser.add_argument("--rate", type=int, help="jobs/s to send, instead of a share of the peak")
    parser.add_argument("--retention", type=float, default=120.0, help="seconds kept after")
    parser.add_argument("--sample", type=float, default=30.0, help="seconds between samples")
    args = parser.parse_args()
    if args.rate:
        rate = args.rate
        print(f"load: sending {rate:,} jobs/s (asked) for {args.minutes:g} min, one worker "
              "process x 10, maintenance on\n")  # fmt: skip
    else:
        # The median of three drains: one burst of 20,000 jobs swings by a third between runs.
        drains = sorted(conveyor_drain(args.dsn, 20_000, 10, 1)[0] for _ in range(3))
        peak = drains[1]
        rate = int(peak * args.share)
        print(
            f"load: peak (drain, 1 process x 10, median of "
            f"{', '.join(f'{d:,.0f}' for d in drains)}) {peak:,.0f} jobs/s; sending {rate:,} "
            f"jobs/s ({args.share:.0%}) for {args.minutes:g} min, one worker process x 10, "
            "maintenance on\n"
        )
    reset(args.dsn)
    print(HEADER)
    print("|---:" * 14 + "|", flush=True)
    rows, sent, elapsed = steady(
        args.dsn, rate, args.minutes * 60, args.retention, args.sample,
        take_load, show_load,
    )  # fmt: skip
    achieved = sent / elapsed
    print(f"\nsent {sent:,} jobs in {elapsed:.0f}s ({achieved:,.0f} jobs/s of {rate:,} asked)")
    print(flat(rows))
    print(slopes(rows, min(10.0, args.minutes / 2)))


if __name__ == "__main__":
    main()
