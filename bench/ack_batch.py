"""What one acknowledgement (``ack_jobs``) costs by batch size, planned as a busy worker plans it.
(Not run in CI.)

    .venv/bin/python -m bench.ack_batch [--dsn DSN] [--sizes 100,200,1000,5000] [--rounds 30]

For each batch size, on a fresh schema: the live table is filled, emptied and vacuumed (so
the cached generic plans take it for empty, as after a VACUUM of a worker that keeps up), or,
with ``--stats sound``, vacuumed while it holds 2,000 jobs; then ``--rounds`` times, that many
running jobs are inserted and completed by one ``ack_jobs`` call in its own transaction. It
prints the median time of a call (the first five rounds left out: the plan is cached by then),
with nested loops as the function sets them (off since 0033) and, alternating, with nested
loops allowed again (``ALTER FUNCTION ... SET enable_nestloop = on``: the plan before 0033).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

from conveyor import Conveyor
from conveyor.testing import LOCAL_TEST_DSN

SCHEMA = "conveyor_ack_batch"
RUNNING = """
INSERT INTO {schema}.job (id, queue, data, state, attempt, worker_id, retry_limit, retry_delay,
    retry_backoff, expire_in, retention, created_at, started_at, run_at)
SELECT gen_random_uuid(), 'bench', '{{}}', 'active', 1, %s, 2, 5, 'exponential', 900, 604800,
       now(), now(), now()
FROM generate_series(1, %s)
RETURNING id
"""
ACK = "SELECT count(*) FROM {schema}.ack_jobs(%s, %s, %s, %s, %s, %s, %s, NULL)"


def prepare(dsn: str, stats: str, nested: bool) -> None:
    """A fresh schema whose live table's statistics say ``stats``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
    Conveyor(dsn, schema=SCHEMA).migrate()
    schema = sql.Identifier(SCHEMA)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("INSERT INTO {}.queue (name) VALUES ('bench')").format(schema))
        conn.execute(sql.SQL(RUNNING).format(schema=schema), [uuid.uuid4(), 2000])
        if stats == "empty":
            conn.execute(sql.SQL("DELETE FROM {}.job").format(schema))
        conn.execute(sql.SQL("VACUUM {}.job").format(schema))
        if nested:
            conn.execute(
                sql.SQL("ALTER FUNCTION {}.ack_jobs SET enable_nestloop = on").format(schema)
            )


def ack_ms(dsn: str, size: int, rounds: int) -> float:
    """The median ms of one ack_jobs call completing ``size`` running jobs."""
    schema = sql.Identifier(SCHEMA)
    worker = uuid.uuid4()
    times = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(rounds):
            ids = [r[0] for r in conn.execute(sql.SQL(RUNNING).format(schema=schema),
                                              [worker, size]).fetchall()]  # fmt: skip
            args: list[Any] = [ids, [worker] * size, [1] * size, ["completed"] * size]
            args += [[None] * size] * 3
            start = time.perf_counter()
            with conn.transaction():
                found = conn.execute(sql.SQL(ACK).format(schema=schema), args).fetchone()
            times.append(time.perf_counter() - start)
            assert found is not None and found[0] == size, found
    return 1000 * statistics.median(times[5:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=LOCAL_TEST_DSN)
    parser.add_argument("--sizes", default="100,200,1000,5000")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--stats", choices=("empty", "sound"), default="empty")
    args = parser.parse_args()
    print(f"ack_jobs, live table statistics {args.stats!r}; median ms a call of {args.rounds}")
    print("| batch | nested loops off (as shipped) | nested loops on (before 0033) | ratio |")
    print("|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        found = {}
        for nested in (False, True):
            prepare(args.dsn, args.stats, nested)
            found[nested] = ack_ms(args.dsn, size, args.rounds)
        print(f"| {size:,} | {found[False]:.2f} | {found[True]:.2f} "
              f"| {found[True] / found[False]:.2f}x |", flush=True)  # fmt: skip
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))


if __name__ == "__main__":
    main()
