"""A handler whose writes, follow-up job and completion commit together, or not at all."""

import os

import psycopg
from psycopg import sql

from conveyor import Conveyor, Job

dsn = os.environ["CONVEYOR_DATABASE_URL"]
schema = os.environ.get("CONVEYOR_SCHEMA", "conveyor")
app = Conveyor(dsn, schema=schema)
invoices = sql.Identifier(schema, "invoices")


@app.job("billing.invoice", retry_limit=2, retry_delay=0)
def invoice(job: Job) -> None:
    with job.transaction() as conn:  # `async with` in an async def handler
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(invoices),
                     [job.data["order"], job.attempt])  # fmt: skip
        app.send("billing.mail", {"invoice_job": str(job.id)}, connection=conn)
        if job.attempt == 1:
            raise RuntimeError("the payment provider timed out")  # all of it rolls back
        job.set_result({"invoice": job.data["order"]})
    # Committed: the job is completed now, whatever happens after this line.


with psycopg.connect(dsn, autocommit=True) as conn:
    conn.execute(
        sql.SQL("CREATE TABLE {} (order_id int PRIMARY KEY, attempt int)").format(invoices)
    )

job_id = app.send("billing.invoice", {"order": 42})
app.drain(["billing.invoice"])  # attempt 1 rolls back and fails; attempt 2 commits

done = app.get_job(job_id)
print(done.state, done.attempt, done.result)  # completed 2 {'invoice': 42}
assert (done.state, done.attempt, done.result) == ("completed", 2, {"invoice": 42})
with psycopg.connect(dsn, autocommit=True) as conn:
    rows = conn.execute(sql.SQL("SELECT order_id, attempt FROM {}").format(invoices)).fetchall()
    assert rows == [(42, 2)]  # only the committed attempt's row
    conn.execute(sql.SQL("DROP TABLE {}").format(invoices))
mails = [j for j in app.list_jobs(queue="billing.mail") if j.data["invoice_job"] == str(job_id)]
assert len(mails) == 1  # and one follow-up job
app.close()
