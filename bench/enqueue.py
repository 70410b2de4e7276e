"""Enqueue throughput: ``send`` one job per call (and transaction) and ``send_batch``.

    .venv/bin/python bench/enqueue.py [--dsn DSN] [--sends 2000] [--batch 10000] [--rounds 3]

Prints the median over rounds; each round runs on a freshly migrated, empty schema.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from conveyor import Conveyor
from conveyor.testing import LOCAL_TEST_DSN

SCHEMA = "conveyor_bench"


def fresh_app(dsn: str) -> Conveyor:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    app = Conveyor(dsn, schema=SCHEMA)
    app.migrate()
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=LOCAL_TEST_DSN)
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    one_by_one, batch = [], []
    for _ in range(args.rounds):
        with fresh_app(args.dsn) as app:
            for i in range(50):  # warm the pool and the server's plan cache
                app.send("warm", {"i": i})
            start = time.perf_counter()
            for i in range(args.sends):
                app.send("bench", {"i": i})
            one_by_one.append(time.perf_counter() - start)
            jobs = [("bench", {"i": i}) for i in range(args.batch)]
            start = time.perf_counter()
            app.send_batch(jobs)
            batch.append(time.perf_counter() - start)
    send_s = statistics.median(one_by_one) / args.sends
    batch_s = statistics.median(batch)
    print(f"send, 1 job per call:  {send_s * 1000:.3f} ms/job  {1 / send_s:,.0f} jobs/s")
    print(
        f"send_batch({args.batch}):   {batch_s * 1000:.1f} ms      {args.batch / batch_s:,.0f} jobs/s"
    )
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


if __name__ == "__main__":
    main()
