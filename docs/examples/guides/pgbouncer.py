"""An app whose DSN is PgBouncer in transaction mode, with LISTEN on a direct connection."""

import os

from conveyor import Conveyor, Job

app = Conveyor(
    os.environ["CONVEYOR_DATABASE_URL"],  # e.g. postgresql://app@pgbouncer:6432/app
    schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"),
    pgbouncer=True,  # no server-side prepared statements, no LISTEN through the bouncer
    # A direct connection to PostgreSQL, for LISTEN only (one per worker process). Conveyor
    # does not read this variable itself: without listen_dsn, workers and wait_for poll.
    listen_dsn=os.environ.get("CONVEYOR_LISTEN_URL", os.environ["CONVEYOR_DATABASE_URL"]),
)


@app.job("thumbnails")
def thumbnail(job: Job) -> str:
    return f"{job.data['key']}.thumb.png"


job_id = app.send("thumbnails", {"key": "cat"})
app.drain()
assert app.get_job(job_id).result == "cat.thumb.png"
app.close()
