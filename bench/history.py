"""The dashboard, the admin API and /metrics against a large history (issue 15: each request
<= 50 ms with 5 million history rows).

    .venv/bin/python -m bench.history [--dsn DSN] [--rows 5000000] [--repeat 7] [--keep]

Fills a schema of its own (``conveyor_bench_history``) quickly: the archive straight from
``generate_series`` (a row a job, spread over ten queues, the runway's partitions and the last
six days), 1% of it as dead letters, a live backlog, then one rollup of the counters and
``ANALYZE``, as a deployed leader leaves them. Then it times every GET page and API request and
``/metrics`` in the process (Starlette's TestClient around ``create_app``): one warm-up, then
the median and the slowest of ``--repeat`` runs each, in a table. The schema is dropped at the
end unless ``--keep``; ``--reuse`` times a kept schema again without filling it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import psycopg
from starlette.testclient import TestClient

from conveyor import Conveyor
from conveyor.config import STATS_WAIT_BOUNDS_MS
from conveyor.web import create_app

LOCAL_TEST_DSN = "postgresql://root@127.0.0.1:5432/test"
TOKEN = "bench-history-token"
QUEUES = 10
BUDGET_MS = 50.0

FILL = """
INSERT INTO {s}.job_archive (
    id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay, retry_backoff,
    retry_delay_max, expire_in, retention, created_at, started_at, finished_at, result, errors,
    drop_at)
SELECT gen_random_uuid(), 'q' || (g %% {queues}), CASE WHEN g %% 20 = 0 THEN 'cancelled'
       ELSE 'completed' END, jsonb_build_object('i', g), 0, f - interval '2 seconds', 1, 2, 5,
       'exponential', 3600, 900, 604800, f - interval '3 seconds', f - interval '1 second', f,
       jsonb_build_object('r', g), '[]', p.los[1 + g %% cardinality(p.los)]
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) g
CROSS JOIN LATERAL (SELECT now() - make_interval(secs => (g * 518400.0 / %(rows)s)) AS f) t
CROSS JOIN (SELECT array_agg(lo ORDER BY lo) AS los FROM {s}.archive_partition
            WHERE lo > now() + interval '1 day') p
"""

DEAD = """
INSERT INTO {s}.job_dead (
    id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay, retry_backoff,
    retry_delay_max, expire_in, retention, created_at, started_at, finished_at, errors)
SELECT gen_random_uuid(), 'q' || (g %% {queues}), 'failed', jsonb_build_object('i', g), 0,
       f - interval '2 seconds', 3, 2, 5, 'exponential', 3600, 900, 604800,
       f - interval '3 seconds', f - interval '1 second', f,
       jsonb_build_array(jsonb_build_object('attempt', 3, 'type', 'ValueError',
           'message', 'boom ' || g, 'traceback', NULL, 'at', f))
FROM generate_series(1, %(n)s::bigint) g
CROSS JOIN LATERAL (SELECT now() - make_interval(secs => (g * 518400.0 / %(n)s)) AS f) t
"""


def fill(dsn: str, schema: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    with Conveyor(dsn, schema=schema) as app:
        app.migrate()
        for q in range(QUEUES):
            app.create_queue(f"q{q}")
        app.send_batch([(f"q{i % QUEUES}", {"i": i}) for i in range(10_000)])
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        step = 500_000
        for lo in range(1, rows + 1, step):
            hi = min(rows, lo + step - 1)
            conn.execute(
                FILL.format(s=schema, queues=QUEUES).encode(),
                {"lo": lo, "hi": hi, "rows": rows},
            )
            print(f"  archive: {hi:,} rows, {time.monotonic() - started:.0f} s", flush=True)
        conn.execute(DEAD.format(s=schema, queues=QUEUES).encode(), {"n": rows // 100})
        conn.execute(
            f"SELECT * FROM {schema}.stats_rollup(NULL, 0, 0, %s, %s)",
            (rows * 2, list(STATS_WAIT_BOUNDS_MS)),
        )
        conn.execute(f"ANALYZE {schema}.job_archive")
        conn.execute(f"VACUUM ANALYZE {schema}.job_dead")
        conn.execute(f"VACUUM ANALYZE {schema}.job")
    print(f"filled in {time.monotonic() - started:.0f} s", flush=True)


def requests(dsn: str, schema: str) -> list[str]:
    """Every GET the dashboard and the API serve, with a real job id where one is needed."""
    with psycopg.connect(dsn) as conn:
        archived = conn.execute(
            f"SELECT id FROM {schema}.job_archive ORDER BY finished_at DESC LIMIT 1"
        ).fetchone()
        dead = conn.execute(f"SELECT id FROM {schema}.job_dead LIMIT 1").fetchone()
    assert archived is not None and dead is not None
    return [
        "/", "/jobs", "/jobs?state=completed", "/jobs?queue=q3", "/jobs?state=failed",
        "/jobs?state=cancelled&queue=q5", f"/jobs/{archived[0]}", f"/jobs/{archived[0]}/flow",
        f"/jobs/{dead[0]}", "/dead", "/dead?queue=q4", "/schedules", "/workers",
        "/api/queues", "/api/queues/q1", "/api/jobs", "/api/jobs?state=completed",
        "/api/jobs?queue=q2&state=completed", "/api/jobs?state=failed",
        "/api/jobs?state=created", f"/api/jobs/{archived[0]}", "/api/dead",
        "/api/dead?queue=q7", "/api/schedules", "/api/workers", "/api/stats",
        "/api/stats/series", "/api/stats/series?queue=q1&minutes=60", "/metrics",
    ]  # fmt: skip


def time_requests(dsn: str, schema: str, repeat: int) -> list[dict[str, Any]]:
    paths = requests(dsn, schema)
    found: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with Conveyor(dsn, schema=schema) as app, TestClient(create_app(app, token=TOKEN)) as client:
        for path in paths:
            status = client.get(path, headers=headers).status_code
            took = []
            for _ in range(repeat):
                start = time.perf_counter()
                response = client.get(path, headers=headers)
                took.append((time.perf_counter() - start) * 1000)
                status = response.status_code
            found.append(
                {"path": path, "status": status, "median": statistics.median(took),
                 "max": max(took)}
            )  # fmt: skip
    return found


def table(found: list[dict[str, Any]]) -> str:
    lines = ["| request | status | median ms | slowest ms | <= 50 ms |", "|---|---:|---:|---:|---|"]
    for r in found:
        ok = "yes" if r["median"] <= BUDGET_MS else "**no**"
        lines.append(
            f"| `{r['path']}` | {r['status']} | {r['median']:.1f} | {r['max']:.1f} | {ok} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("CONVEYOR_BENCH_DSN", LOCAL_TEST_DSN))
    parser.add_argument("--schema", default="conveyor_bench_history")
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the schema afterwards")
    parser.add_argument("--reuse", action="store_true", help="time a kept schema, no fill")
    args = parser.parse_args()
    try:
        if args.reuse:
            with Conveyor(args.dsn, schema=args.schema) as app:
                app.migrate()
        else:
            fill(args.dsn, args.schema, args.rows)
        found = time_requests(args.dsn, args.schema, args.repeat)
        with psycopg.connect(args.dsn) as conn:
            s = args.schema
            size = conn.execute(
                f"SELECT (SELECT count(*) FROM {s}.job_archive), "
                f"(SELECT count(*) FROM {s}.job_dead), (SELECT count(*) FROM {s}.job)"
            ).fetchone()
            assert size is not None
        print(f"history rows: archive {size[0]:,}, dead letters {size[1]:,}, live {size[2]:,}")
        print(table(found))
    finally:
        if not args.keep:
            with psycopg.connect(args.dsn, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {args.schema} CASCADE")


if __name__ == "__main__":
    main()
