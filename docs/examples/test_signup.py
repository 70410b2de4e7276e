from collections.abc import Iterator

import pytest
from signup import build

from conveyor import Conveyor, JobState


@pytest.fixture
def signup(conveyor_dsn: str, conveyor_schema: str) -> Iterator[Conveyor]:
    with build(conveyor_dsn, schema=conveyor_schema) as app:
        yield app


def test_the_welcome_email_is_sent(signup: Conveyor) -> None:
    job_id = signup.send("email.welcome", {"to": "a@b.c"})
    assert signup.drain() == 1  # runs every job due now, here, then returns
    job = signup.get_job(job_id)
    assert job.state is JobState.COMPLETED
    assert job.result == {"sent_to": "a@b.c"}


def test_a_bad_address_fails_at_once(signup: Conveyor) -> None:
    job_id = signup.send("email.welcome", {"to": "nobody"})
    signup.drain()
    job = signup.get_job(job_id)
    assert job.state is JobState.FAILED
    assert job.error is not None and job.error["message"] == "not an email address"
