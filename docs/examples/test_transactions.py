import psycopg
import pytest

from conveyor import Conveyor, JobNotFound


def test_a_rolled_back_transaction_sends_nothing(app: Conveyor, conveyor_dsn: str) -> None:
    with psycopg.connect(conveyor_dsn) as conn:
        job_id = app.send("email.welcome", {"to": "a@b.c"}, connection=conn)
        conn.rollback()
    with pytest.raises(JobNotFound):
        app.get_job(job_id)
