"""A worker keeps going through a full PostgreSQL restart: it reconnects, LISTENs again, and
finishes the work with nothing lost. Runs on an embedded server of its own, so restarting it
disturbs no other test."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import psycopg

from conveyor import Conveyor, JobState
from conveyor._store.worker_store import WorkerStore
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


def test_a_restart_longer_than_stale_after_is_no_reason_to_presume_a_worker_dead(
    tmp_path: Path,
) -> None:
    """No worker can beat while the server is down. After a restart, a worker whose last
    heartbeat is older than stale_after only because of the outage keeps its jobs until the
    server has been up for stale_after; a worker still silent then is recovered as before."""
    stale_after = 3.0
    data_dir = tmp_path / "pg"
    with embedded_postgres(data_dir) as dsn:
        with Conveyor(dsn, schema=SCHEMA) as app:
            app.migrate()
            job_id = app.send("q", {})
        worker = uuid.uuid4()

        async def claim() -> None:
            store = WorkerStore(dsn, SCHEMA, min_size=0, max_size=1)
            try:
                await store.worker_register(worker, "host", 1, ["q"], 1)
                assert len(await store.job_fetch(["q"], worker, 1, None)) == 1
            finally:
                await store.close()

        asyncio.run(claim())

    def recover() -> list[uuid.UUID]:
        async def run() -> list[uuid.UUID]:
            store = WorkerStore(dsn, SCHEMA, min_size=0, max_size=1)
            try:
                return [c.id for c in await store.job_recover(stale_after, stale_after, None)]
            finally:
                await store.close()

        return asyncio.run(run())

    def uptime() -> float:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8"
            ).fetchone()
        assert row is not None
        return float(row[0])

    with embedded_postgres(data_dir) as again:
        assert again == dsn
        with psycopg.connect(dsn, autocommit=True) as conn:
            # Its last heartbeat came before the outage, longer ago than stale_after.
            conn.execute(f"UPDATE {SCHEMA}.worker SET heartbeat_at = now() - interval '1 minute'")
        assert uptime() < stale_after  # else this test proves nothing: the server came up slowly
        assert recover() == []
        with Conveyor(dsn, schema=SCHEMA) as app:
            job = app.get_job(job_id)
            assert (job.state, job.attempt) == (JobState.ACTIVE, 1)
        wait_until(lambda: uptime() > stale_after, 30, "the server up for stale_after")
        assert recover() == [job_id]  # still silent: presumed dead after all
        with Conveyor(dsn, schema=SCHEMA) as app:
            job = app.get_job(job_id)
            assert job.state == JobState.RETRY
            assert job.errors[-1]["type"] == "WorkerLost"
