"""Dependencies, a parent/children flow, publish/subscribe and completion hooks."""

import os

from conveyor import Conveyor, Job, JobState

app = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))


@app.job("etl.extract")
def extract(job: Job) -> int:
    return 120  # rows extracted


@app.job("etl.report")
def report(job: Job) -> str:
    # job.results: the results of the completed jobs it depends on, by job id.
    return f"{sum(job.results.values())} rows"


@app.job("reports.part")
def part(job: Job) -> int:
    return job.data["shard"] * 10


@app.job("reports.merge")
def merge(job: Job) -> int:
    return sum(job.results.values())  # every child's result


@app.job("mail.welcome")
def welcome(job: Job) -> None:
    print("welcome", job.data["user"])


@app.job("crm.sync")
def crm(job: Job) -> None:
    print("crm", job.data["user"])


@app.job("invoice.render")
def render(job: Job) -> str:
    return f"invoice-{job.data['id']}.pdf"


@app.job("invoice.done")
def invoice_done(job: Job) -> None:
    print(job.data["queue"], job.data["state"], job.data["result"])


# 1. depends_on: waits (state "waiting") until every job it names has finished.
a = app.send("etl.extract", {"day": "2026-11-25"})
b = app.send("etl.extract", {"day": "2026-11-26"})
joined = app.send("etl.report", {}, depends_on=[a, b])
assert app.get_job(joined).state is JobState.WAITING

# 2. flow: a parent and its children in one statement; the parent runs after the last child.
parent = app.flow(
    ("reports.merge", {"month": 11}),
    children=[("reports.part", {"shard": n}) for n in range(4)],
)

# 3. publish/subscribe: subscriptions live in the database; publish sends one job per queue.
app.subscribe("user.created", "mail.welcome")
app.subscribe("user.created", "crm.sync")
fanned = app.publish("user.created", {"user": 7})
assert len(fanned) == 2

# 4. on_complete: when the job ends (completed, failed or cancelled), its outcome is sent on.
invoice = app.send("invoice.render", {"id": 7}, on_complete="invoice.done")

app.drain()
assert app.get_job(joined).result == "240 rows"
assert app.get_job(parent).result == 0 + 10 + 20 + 30
assert app.get_job(invoice).state is JobState.COMPLETED
hook = app.list_jobs(queue="invoice.done")[0]
assert hook.data["job_id"] == str(invoice) and hook.data["result"] == "invoice-7.pdf"
app.close()
