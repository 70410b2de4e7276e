"""Lifecycle events: how long an attempt took, a cancelled job, the tick of a schedule."""

import os

from conveyor import Conveyor, Job
from conveyor.events import Event

app = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))
seen: list[str] = []


@app.on("job.completed")
def took(event: Event) -> None:
    assert event.job is not None and event.duration is not None
    seen.append(f"{event.job.queue} completed in {event.duration * 1000:.1f} ms")


@app.on("job.cancelled")
def cancelled(event: Event) -> None:
    seen.append(f"cancelled {event.job.id if event.job else event.job_id}")


@app.job("reports.hourly")
def hourly(job: Job) -> None:
    # Sent by a schedule: the tick this run stands for (a backfilled 09:00 run says 09:00).
    print("report for", job.scheduled_for or "a run sent by hand")


app.send("reports.hourly", {})
later = app.send("reports.hourly", {}, start_after=3600)
app.drain()
app.cancel(later)  # queued, no worker held it: reported by this app
print("\n".join(seen))
assert len(seen) == 2 and seen[-1] == f"cancelled {later}"
app.close()
