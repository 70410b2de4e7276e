"""Pausing a queue, and acting on many jobs at once by filter."""

import os

from conveyor import Conveyor, Job, JobState

app = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))
app.migrate()


@app.job("reports")
def report(job: Job) -> str:
    return f"report for {job.data['tenant']}"


@app.job("emails")
def email(job: Job) -> None:
    print("sending", job.data)


# Pause: every worker stops starting the queue's jobs; sends are still accepted.
acme = app.send("reports", {"tenant": "acme"})
app.pause_queue("reports")
globex = app.send("reports", {"tenant": "globex"})
mail = app.send("emails", {"to": "ada@example.com"})
app.drain()  # the email runs, the reports wait
assert app.get_job(mail).state is JobState.COMPLETED
assert {app.get_job(r).state for r in (acme, globex)} == {JobState.CREATED}
assert app.get_queue("reports").paused

app.resume_queue("reports")
app.drain()
assert {app.get_job(r).state for r in (acme, globex)} == {JobState.COMPLETED}

# Bulk actions: count first (dry run), then act in batches.
app.send_batch([("emails", {"to": f"user{n}@spam.example"}) for n in range(1500)])
app.send_batch([("emails", {"to": f"user{n}@example.com"}) for n in range(3)])
preview = app.bulk_jobs("cancel", queue="emails", search="@spam.example", dry_run=True)
print(f"{preview.matched} jobs would be cancelled")  # these 1500, and any left queued before
assert preview.matched >= 1500 and preview.affected == 0

done = app.bulk_jobs("cancel", queue="emails", search="@spam.example")
assert done.affected == preview.matched
assert app.list_jobs("emails", state="created", search="@spam.example") == []

# The rest: bring them forward at a higher priority, and tidy up the cancelled ones.
app.bulk_jobs("reprioritize", queue="emails", state="created", priority=10)
app.bulk_jobs("delete", queue="emails", state="cancelled", older_than=0)
assert {j.priority for j in app.list_jobs("emails", state="created")} == {10}
assert app.queue_stats("emails").counts[JobState.CANCELLED] == 0
app.close()
