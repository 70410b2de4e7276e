"""check.py: after `conveyor worker tasks:app --burst`, the job is completed with its result."""

from tasks import app

job = app.list_jobs(queue="email.send", limit=1)[0]
print(job.state, job.result)  # completed {'sent_to': 'ada@example.com'}
assert job.result == {"sent_to": "ada@example.com"}
