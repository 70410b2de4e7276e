"""``wait_for`` shares one LISTEN connection per app, however many waits run at once, and is
still woken at once by the jobs it waits for."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

from conveyor import Conveyor, JobState
from tests.integration.test_failover import terminate_backends


def listening(dsn: str, schema: str) -> int:
    """How many sessions outside the app's pool read this schema's jobs or listen for them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s "
            "AND application_name <> %s AND pid <> pg_backend_pid()",
            [f"%{schema}%", f"conveyor {schema}"],
        ).fetchone()
    return int(row[0]) if row else 0


def until(check: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_concurrent_waits_share_one_connection_and_wake_at_once(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    ids = [app.send("wait.q", {"n": i}) for i in range(5)]
    with ThreadPoolExecutor(5) as pool:
        waits = [pool.submit(app.wait_for, job_id, timeout=30) for job_id in ids]
        until(lambda: listening(conveyor_dsn, conveyor_schema) >= 1)
        time.sleep(0.3)  # every wait has had the time to open a connection of its own
        assert listening(conveyor_dsn, conveyor_schema) == 1
        start = time.monotonic()
        for job_id in ids:
            app.cancel(job_id)
        assert [w.result(10).state for w in waits] == [JobState.CANCELLED] * 5
    assert time.monotonic() - start < 5


async def test_concurrent_async_waits_share_one_connection(
    app_async: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    ids = [await app_async.send_async("wait.q", {"n": i}) for i in range(5)]
    waits = [asyncio.create_task(app_async.wait_for_async(i, timeout=30)) for i in ids]
    await asyncio.sleep(0.3)
    assert await asyncio.to_thread(listening, conveyor_dsn, conveyor_schema) == 1
    for job_id in ids:
        await app_async.cancel_async(job_id)
    done = await asyncio.wait_for(asyncio.gather(*waits), 10)
    assert [j.state for j in done] == [JobState.CANCELLED] * 5


def test_a_wait_survives_its_listen_connection_being_terminated(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    job_id = app.send("wait.q", {})
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(app.wait_for, job_id, timeout=30)
        until(lambda: listening(conveyor_dsn, conveyor_schema) == 1)
        terminate_backends(conveyor_dsn, f"conveyor wait_for {conveyor_schema}")
        until(lambda: listening(conveyor_dsn, conveyor_schema) == 1)  # listening again
        app.cancel(job_id)
        assert waiting.result(10).state is JobState.CANCELLED
