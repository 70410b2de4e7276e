"""tasks.py: the application and its handlers; workers and senders import it."""

import os

from conveyor import Conveyor, Job

# The DSN comes from CONVEYOR_DATABASE_URL (or DATABASE_URL); the schema from CONVEYOR_SCHEMA,
# the variable the `conveyor` command reads too, so both look at the same tables.
app = Conveyor(schema=os.environ.get("CONVEYOR_SCHEMA", "conveyor"))


@app.job("email.send", retry_limit=5, retry_delay=30)
def send_email(job: Job) -> dict[str, str]:
    job.logger.info("sending to %s", job.data["to"])
    return {"sent_to": job.data["to"]}
