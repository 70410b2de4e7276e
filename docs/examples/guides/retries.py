"""Retries, snoozes, failing at once, and the dead letters."""

import os
from uuid import UUID

from conveyor import Conveyor, Fail, Job, JobState, Retry
from conveyor.events import Event

app = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))


class Unreachable(Exception):
    pass


@app.job("crm.sync", retry_limit=0, dead_letter="crm.sync.dead")
def sync_contact(job: Job) -> None:
    raise Unreachable("crm.example.com timed out")  # no retries left: dead at once


@app.job("email.send")
def send_email(job: Job) -> str:
    if "@" not in job.data["to"]:
        raise Fail("not an email address")  # fail now, whatever retries are left
    if job.data.get("mailbox_full"):
        raise Retry(after=3600, reason="mailbox full")  # later; the attempt is not spent
    return "sent"


# A retry policy as a function: seconds before the next attempt, or None to stop retrying.
def policy(attempt: int, error: BaseException) -> float | None:
    if isinstance(error, PermissionError):
        return None
    return min(10.0 * attempt, 120.0)


@app.job("images.resize", retry_limit=8, retry_policy=policy)
def resize(job: Job) -> None:
    raise PermissionError("bucket refuses writes")


dead_events: list[UUID] = []


@app.on("job.dead")
def alert(event: Event) -> None:
    assert event.job is not None
    dead_events.append(event.job.id)  # send to your alerting instead


crm = app.send("crm.sync", {"contact": 7})
bad = app.send("email.send", {"to": "nobody"})
full = app.send("email.send", {"to": "ada@example.com", "mailbox_full": True})
image = app.send("images.resize", {"key": "cat.png"})
app.drain(["crm.sync", "email.send", "images.resize"])

assert app.get_job(crm).state is JobState.FAILED  # in the dead letters
assert app.get_job(bad).error["message"] == "not an email address"
snoozed = app.get_job(full)  # queued again for an hour from now, its attempt not spent
assert (snoozed.state, snoozed.attempt) == (JobState.CREATED, 0)
assert app.get_job(image).attempt == 1  # the policy said stop after the first failure
assert {crm, bad, image} <= set(dead_events)  # with jobs an earlier run queued again

# The copy sent to the dead_letter queue, for a handler that compensates or reports.
copy = app.list_jobs(queue="crm.sync.dead")[0]
print(copy.data)

# The dead letters, each with every attempt's error and traceback; replay one, or a queue's.
for job in app.list_dead():
    print(job.queue, job.error["type"], job.error["message"])
again = app.retry_dead(crm)
assert (again.state, again.attempt) == (JobState.CREATED, 0)
app.retry_dead_all("email.send")
assert app.get_job(bad).state is JobState.CREATED
app.close()
