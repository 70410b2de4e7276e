"""When the hot path notifies (issue 14): a NOTIFY serialises commits cluster-wide, so acks notify
the ':done' channel only while a ``wait_for`` is registered, and a registration racing an ack is
never left unwoken."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

from conveyor import Conveyor, Job, JobState
from conveyor._store.worker_store import WorkerStore


def done_notes(conn: psycopg.Connection[Any], seconds: float) -> list[str]:
    """The payloads heard on a listening connection within ``seconds``."""
    return [note.payload for note in conn.notifies(timeout=seconds)]


def listen_done(dsn: str, schema: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(f"conveyor:{schema}:done")))
    return conn


def test_acks_notify_done_only_while_a_wait_for_is_registered(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    @app.job("quiet.q")
    def handle(job: Job) -> int:
        return 1

    with listen_done(conveyor_dsn, conveyor_schema) as listener:
        for i in range(5):
            app.send("quiet.q", {"i": i})
        assert app.drain() == 5
        assert done_notes(listener, 0.3) == []

        waited = app.send("quiet.q", {"i": "waited"})
        outcome: list[Job] = []
        waiting = threading.Thread(target=lambda: outcome.append(app.wait_for(waited, 30)))
        waiting.start()
        deadline = time.monotonic() + 10
        while not _waiters(conveyor_dsn, conveyor_schema):
            assert time.monotonic() < deadline, "wait_for never registered"
            time.sleep(0.02)
        assert app.drain() == 1
        waiting.join(10)
        assert outcome and outcome[0].state is JobState.COMPLETED
        assert str(waited) in ",".join(done_notes(listener, 1.0))
    assert _waiters(conveyor_dsn, conveyor_schema) == 0  # the registration goes with the wait


def test_a_wait_for_registered_while_an_ack_commits_is_woken_at_once(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    job_id = app.send("race.q", {})
    worker = uuid.uuid4()
    ack = sql.SQL(
        "SELECT * FROM {s}.ack_jobs(ARRAY[%s::uuid], ARRAY[%s::uuid], ARRAY[1], "
        "ARRAY['completed'], ARRAY[NULL::jsonb], ARRAY[NULL::jsonb], "
        "ARRAY[NULL::double precision], NULL)"
    ).format(s=sql.Identifier(conveyor_schema))
    claim = sql.SQL("SELECT id FROM {s}.fetch_jobs(ARRAY['race.q'], %s, 1, NULL)").format(
        s=sql.Identifier(conveyor_schema)
    )
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        assert conn.execute(claim, [worker]).fetchall() == [(job_id,)]
        outcome: list[tuple[Job, float]] = []
        with conn.transaction():
            # The ack has finished the job but not committed when the wait registers: no waiter
            # existed when it looked, so only the wait's re-read finds the outcome.
            assert conn.execute(ack, [job_id, worker]).fetchall()

            def wait() -> None:
                job = app.wait_for(job_id, timeout=20)
                outcome.append((job, time.monotonic()))

            waiting = threading.Thread(target=wait)
            waiting.start()
            time.sleep(0.5)
            committed = time.monotonic()
        waiting.join(25)
    assert outcome, "wait_for did not return"
    job, returned = outcome[0]
    assert job.state is JobState.COMPLETED
    assert returned - committed < 3, f"woken {returned - committed:.1f}s after the commit"


def _waiters(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("SELECT count(*) FROM {}.waiter").format(sql.Identifier(schema))
        row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def test_a_wait_for_returns_when_recovery_fails_its_job_for_good(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    """A job whose worker died on its last attempt is failed by recovery (through ack_jobs, so
    under the same rule): the waiting caller hears of it at once, not at its timeout."""
    job_id = app.send("orphan.q", {}, retry_limit=0)
    claim = sql.SQL("SELECT id FROM {s}.fetch_jobs(ARRAY['orphan.q'], %s, 1, NULL)").format(
        s=sql.Identifier(conveyor_schema)
    )
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        # Claimed by a worker that never registered: recovery treats it as dead.
        assert conn.execute(claim, [uuid.uuid4()]).fetchall() == [(job_id,)]
    outcome: list[tuple[Job, float]] = []

    def wait() -> None:
        job = app.wait_for(job_id, timeout=20)
        outcome.append((job, time.monotonic()))

    waiting = threading.Thread(target=wait)
    waiting.start()
    deadline = time.monotonic() + 10
    while not _waiters(conveyor_dsn, conveyor_schema):
        assert time.monotonic() < deadline, "wait_for never registered"
        time.sleep(0.02)
    time.sleep(0.5)  # past its read of the job: now only a notification can wake it
    store = WorkerStore(conveyor_dsn, conveyor_schema, min_size=0, max_size=1)

    async def recover() -> list[Any]:
        try:
            return await store.job_recover(30, 60, None)
        finally:
            await store.close()

    recovered_at = time.monotonic()
    assert [c.state for c in asyncio.run(recover())] == ["failed"]
    waiting.join(25)
    assert outcome, "wait_for did not return"
    job, returned = outcome[0]
    assert job.state is JobState.FAILED
    assert returned - recovered_at < 3, f"woken {returned - recovered_at:.1f}s after recovery"


def test_bulk_cancel_and_delete_notify_done_once_per_batch_and_only_for_a_registered_wait(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    with listen_done(conveyor_dsn, conveyor_schema) as listener:
        app.send_batch([("bulk.q", {"i": i}) for i in range(250)])
        assert app.bulk_jobs("cancel", queue="bulk.q").affected == 250
        assert app.bulk_jobs("delete", queue="bulk.q", state="cancelled").affected == 250
        assert done_notes(listener, 0.3) == []  # nobody waits

        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("INSERT INTO {}.waiter (id, expires_at) VALUES (%s, now() + '1 min')")
                .format(sql.Identifier(conveyor_schema)), [uuid.uuid4()]
            )  # fmt: skip
        ids = app.send_batch([("bulk.q", {"i": i}) for i in range(450)])
        assert app.bulk_jobs("cancel", queue="bulk.q", batch_size=1000).affected == 450
        notes = done_notes(listener, 1.0)
        assert len(notes) == 3  # 200 ids a notification
        assert sorted(n for note in notes for n in note.split(",")) == sorted(map(str, ids))
        assert app.bulk_jobs("delete", queue="bulk.q", batch_size=1000).affected == 450
        assert len(done_notes(listener, 1.0)) == 3
