"""Recurring jobs: cron in a time zone, fixed intervals, a crontab text, missed ticks."""

import os
from datetime import timedelta

from conveyor import Conveyor, Job

app = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))


@app.job("reports.digest")
def digest(job: Job) -> None:
    print("digest for", job.data["team"])


# 08:00 on weekdays, Paris time (DST included); job options apply to every job it sends.
app.schedule(
    "weekday-digest",
    "0 8 * * 1-5",
    queue="reports.digest",
    data={"team": "support"},
    tz="Europe/Paris",
    retry_limit=3,
)

# Every 5 minutes; after an outage, send each missed tick (up to 12) rather than only the last.
app.schedule(
    "refresh",
    every=timedelta(minutes=5),
    queue="reports.refresh",
    missed="backfill",
    backfill_limit=12,
)

# Many at once from a crontab text: five fields (six with seconds last), the queue, optional
# JSON data, then settings after " ?". prune=True removes schedules the text no longer names.
app.schedule_crontab(
    """
    0 9 10 * * bills.monthly ?tz=Asia/Ulaanbaatar
    */15 * * * * search.reindex {"full": false} ?name=reindex&priority=3
    """
)

for schedule in app.list_schedules():
    print(schedule.name, schedule.cron or f"every {schedule.every:.0f}s", schedule.tz)
names = {s.name for s in app.list_schedules()}  # with any other schedule of the schema
assert {"bills.monthly", "refresh", "reindex", "weekday-digest"} <= names

assert app.unschedule("refresh")  # jobs it already sent stay
assert app.get_schedule("reindex").options["priority"] == 3
app.close()
