"""A burst after a quiet spell: how long one worker takes to drain it. (Not run in CI.)

    .venv/bin/python -m bench.burst [--dsn DSN] [--jobs 300000] [--timeout 600]

A worker process (concurrency 10, maintenance on) starts on an empty schema; its first
maintenance pass analyzes the empty tables. It runs 50 jobs sent one by one, so its
connections plan their acknowledgements while the live table is nearly empty. Then one
``send_batch`` puts ``--jobs`` jobs in the table, and the bench prints how long the worker
takes to run them all (or how many it ran before ``--timeout``).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

import psycopg

from conveyor import Conveyor
from conveyor.testing import LOCAL_TEST_DSN

SCHEMA = "bench_burst"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=LOCAL_TEST_DSN)
    parser.add_argument("--jobs", type=int, default=300_000)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    with Conveyor(args.dsn, schema=SCHEMA) as app:
        app.migrate()
        worker = subprocess.Popen(
            [sys.executable, "-m", "bench.worker_proc", args.dsn, SCHEMA, "serve", "10", "5"],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(3)  # started, and its first maintenance pass is done
            for i in range(50):
                app.send("bench", {"i": i})
                time.sleep(0.01)
            time.sleep(2)
            app.send_batch([("bench", {"i": i}) for i in range(args.jobs)])
            start = time.monotonic()
            with psycopg.connect(args.dsn, autocommit=True) as conn:
                while True:
                    row = conn.execute(f"SELECT count(*) FROM {SCHEMA}.job").fetchone()
                    left = row[0] if row else 0
                    took = time.monotonic() - start
                    if left == 0 or took > args.timeout:
                        break
                    time.sleep(0.2)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=120)
    ran = args.jobs - left
    print(json.dumps({"jobs": args.jobs, "ran": ran, "seconds": round(took, 2),
                      "rate": round(ran / took)}))  # fmt: skip
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


if __name__ == "__main__":
    main()
