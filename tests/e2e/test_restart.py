"""A worker keeps going through a full PostgreSQL restart: it reconnects, LISTENs again, and
finishes the work with nothing lost. Runs on an embedded server of its own, so restarting it
disturbs no other test."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from conveyor import Conveyor
from conveyor.embedded import embedded_postgres
from tests.e2e.test_processes import completed, ledger, start_worker, stop, wait_until

SCHEMA = "restart"


def test_worker_survives_a_postgresql_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    with embedded_postgres(data_dir) as dsn:
        with Conveyor(dsn, schema=SCHEMA) as app:
            app.migrate()
            ids = app.send_batch([("e2e.record", {"n": i}) for i in range(1500)])
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {SCHEMA}.ledger (job_id uuid, attempt int, pid int)")
        proc = start_worker(dsn, SCHEMA, "--concurrency", "4")
        wait_until(lambda: completed(dsn, SCHEMA) > 100, 60, "some progress")
    # The server is down now; the worker keeps trying.
    time.sleep(1.0)
    try:
        with embedded_postgres(data_dir) as again:
            assert again == dsn
            wait_until(lambda: completed(dsn, SCHEMA) == len(ids), 120, "all jobs completed")
            code, out = stop(proc)
            assert code == 0, out[-3000:]
            assert "LISTEN connection lost" in out  # the restart really cut the worker off
            assert {r[0] for r in ledger(dsn, SCHEMA)} == set(ids)
    finally:
        if proc.poll() is None:
            proc.kill()
