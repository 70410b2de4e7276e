"""Migration 0012 against a large history under the layout before it, then the moves.

    .venv/bin/python -m bench.history_migration [--dsn DSN] [--rows 1000000] [--batch 5000]

Migrates a schema of its own (``conveyor_bench_migration``) up to 0011, fills the old
``job_history`` table straight from ``generate_series`` (2% failed), then times ``migrate()`` of
0012 alone and of the rest, and then the calls of ``history_legacy_move`` (``--batch`` rows each)
until the old table is gone, as the maintenance leader makes them. The schema is dropped after.
"""

from __future__ import annotations

import argparse
import os
import time

import psycopg

import conveyor._store.migrate as migrate_module
import conveyor._store.migrations as migrations_module
from conveyor import Conveyor
from conveyor.testing import LOCAL_TEST_DSN

SCHEMA = "conveyor_bench_migration"
FILL = """
INSERT INTO {s}.job_history (
    id, queue, state, data, run_at, attempt, retry_limit, retry_delay, retry_backoff,
    retry_delay_max, expire_in, retention, created_at, started_at, finished_at, result, errors)
SELECT gen_random_uuid(), 'old', CASE WHEN g %% 50 = 0 THEN 'failed' ELSE 'completed' END,
       jsonb_build_object('i', g), now() - interval '1 hour', 1, 2, 5, 'exponential', 3600, 900,
       86400, now() - interval '1 hour', now() - interval '1 hour',
       now() - make_interval(secs => g %% 3600), jsonb_build_object('r', g), '[]'
FROM generate_series(1, %(rows)s::bigint) g
"""


def migrate(dsn: str, upto: int | None) -> float:
    shipped = migrations_module.migrations()
    chosen = shipped if upto is None else shipped[:upto]
    saved = migrations_module.migrations, migrate_module.migrations
    migrations_module.migrations = migrate_module.migrations = lambda: chosen  # type: ignore[assignment]
    try:
        with Conveyor(dsn, schema=SCHEMA) as app:
            started = time.monotonic()
            print("  applied", app.migrate())
            return time.monotonic() - started
    finally:
        migrations_module.migrations, migrate_module.migrations = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("CONVEYOR_BENCH_DSN", LOCAL_TEST_DSN))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    try:
        migrate(args.dsn, 11)
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            started = time.monotonic()
            conn.execute(f"INSERT INTO {SCHEMA}.queue (name) VALUES ('old')")
            conn.execute(FILL.format(s=SCHEMA).encode(), {"rows": args.rows})
            conn.execute(f"VACUUM ANALYZE {SCHEMA}.job_history")
            print(f"filled {args.rows:,} rows in {time.monotonic() - started:.1f} s")
        print(f"0012: {migrate(args.dsn, 12):.2f} s")
        print(f"the rest: {migrate(args.dsn, None):.2f} s")
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            started, moved, calls, slowest = time.monotonic(), 0, 0, 0.0
            while True:
                call = time.monotonic()
                [(n,)] = conn.execute(
                    f"SELECT {SCHEMA}.history_legacy_move(%s, NULL)", (args.batch,)
                ).fetchall()
                slowest, moved, calls = max(slowest, time.monotonic() - call), moved + n, calls + 1
                if n == 0:
                    break
            print(
                f"moved {moved:,} rows in {calls} calls, {time.monotonic() - started:.1f} s, "
                f"slowest call {slowest * 1000:.0f} ms"
            )
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


if __name__ == "__main__":
    main()
