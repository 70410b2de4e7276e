from collections.abc import Iterator

import pytest
from signup import build

from conveyor import Conveyor, FrozenClock, Job, JobState


def test_a_delayed_job_waits_for_the_clock(frozen_app: Conveyor, frozen_clock: FrozenClock) -> None:
    seen: list[int] = []

    @frozen_app.job("reminders")
    def remind(job: Job) -> None:
        seen.append(job.data["n"])

    frozen_app.send("reminders", {"n": 1}, start_after=3600)
    assert frozen_app.drain() == 0  # due in an hour
    frozen_clock.advance(3600)
    assert frozen_app.drain() == 1
    assert seen == [1]


@pytest.fixture
def signup(
    conveyor_dsn: str, conveyor_schema: str, frozen_clock: FrozenClock
) -> Iterator[Conveyor]:
    with build(conveyor_dsn, schema=conveyor_schema, clock=frozen_clock) as app:
        yield app


def test_a_failed_attempt_is_retried_30_seconds_later(
    signup: Conveyor, frozen_clock: FrozenClock
) -> None:
    job_id = signup.send("email.welcome", {"to": "a@flaky.test"})
    signup.drain()
    assert signup.get_job(job_id).state is JobState.RETRY
    frozen_clock.advance(31)
    signup.drain()
    job = signup.get_job(job_id)
    assert (job.state, job.attempt) == (JobState.COMPLETED, 2)
