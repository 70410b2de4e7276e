"""The app that the e2e tests run in real worker processes (``tests.e2e.jobs:app``).

Every attempt writes a row to the schema's ``ledger`` table before it returns, so a test can count
how often each job really ran, and in which process.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psycopg

from conveyor import Conveyor, Job

DSN = os.environ["CONVEYOR_DATABASE_URL"]
SCHEMA = os.environ["CONVEYOR_SCHEMA"]
app = Conveyor(DSN, schema=SCHEMA)
_local = threading.local()


def ledger(job: Job) -> None:
    """Record this attempt (one connection per handler thread, reopened if it broke)."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = _local.conn = psycopg.connect(DSN, autocommit=True, application_name="e2e ledger")
    conn.execute(
        f'INSERT INTO "{SCHEMA}".ledger (job_id, attempt, pid) VALUES (%s, %s, %s)',
        [job.id, job.attempt, os.getpid()],
    )


@app.job("e2e.record", retry_delay=0.1, retry_limit=5)
def record(job: Job) -> int:
    ledger(job)
    return os.getpid()


@app.job("e2e.sleep", retry_delay=0, retry_limit=3)
def sleep(job: Job) -> str:
    """Sleeps on its first attempt only, so a recovered job finishes at once."""
    ledger(job)
    if job.attempt == 1:
        deadline = time.monotonic() + float(job.data["seconds"])
        while time.monotonic() < deadline and not job.cancelled.is_set():
            time.sleep(0.01)
    return "slept"


@app.job("e2e.flow.child", retry_delay=0, retry_limit=3)
def flow_child(job: Job) -> int:
    ledger(job)
    time.sleep(float(job.data["seconds"]))
    return int(job.data["n"])


@app.job("e2e.flow.parent", retry_delay=0, retry_limit=3)
def flow_parent(job: Job) -> int:
    ledger(job)
    return sum(job.results.values())


@app.job("e2e.tx.die_after_commit", retry_delay=0, retry_limit=3)
def die_after_commit(job: Job) -> None:
    """Records its attempt in the transaction that completes the job, then dies at once: the
    worker is gone between that commit and anything it would write of its own."""
    with job.transaction() as conn:
        conn.execute(
            f'INSERT INTO "{SCHEMA}".ledger (job_id, attempt, pid) VALUES (%s, %s, %s)',
            [job.id, job.attempt, os.getpid()],
        )
        job.set_result("committed")
    os.kill(os.getpid(), signal.SIGKILL)
