"""send.py: enqueue a job; it waits in PostgreSQL until a worker runs it."""

from tasks import app

job_id = app.send("email.send", {"to": "ada@example.com"})
print("sent", job_id, app.get_job(job_id).state)  # sent 0193... created
