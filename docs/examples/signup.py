"""The application under test: its app is built by a function, so tests build their own."""

from __future__ import annotations

from typing import Any

from conveyor import Conveyor, Fail, Job


def build(dsn: str | None = None, *, schema: str = "conveyor", **settings: Any) -> Conveyor:
    app = Conveyor(dsn, schema=schema, **settings)

    @app.job("email.welcome", retry_limit=2, retry_delay=30)
    def send_welcome(job: Job) -> dict[str, str]:
        address = job.data["to"]
        if "@" not in address:
            raise Fail("not an email address")  # no retry
        if address.endswith("@flaky.test") and job.attempt == 1:
            raise ConnectionError("mail server unavailable")  # retried in 30 s
        return {"sent_to": address}

    return app


app = build()  # production: the DSN comes from CONVEYOR_DATABASE_URL when first used
