"""The job is written in your transaction: it exists if and only if the transaction commits."""

import os

import psycopg

from conveyor import Conveyor, JobNotFound

dsn = os.environ["CONVEYOR_DATABASE_URL"]
app = Conveyor(dsn, schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))

with psycopg.connect(dsn) as conn:
    conn.execute("CREATE TEMP TABLE account (email text PRIMARY KEY)")
    conn.commit()

    # Commit: the account and its welcome email, together.
    with conn.transaction():
        conn.execute("INSERT INTO account VALUES (%s)", ["ada@example.com"])
        kept = app.send("email.welcome", {"to": "ada@example.com"}, connection=conn)

    # Roll back (an exception in the block): neither the account nor the job.
    try:
        with conn.transaction():
            conn.execute("INSERT INTO account VALUES (%s)", ["bob@example.com"])
            lost = app.send("email.welcome", {"to": "bob@example.com"}, connection=conn)
            raise RuntimeError("payment declined")
    except RuntimeError:
        pass

print(app.get_job(kept).state)  # created
try:
    app.get_job(lost)
except JobNotFound:
    print("no job for the rolled-back signup")
app.close()
