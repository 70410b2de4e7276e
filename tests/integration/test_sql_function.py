"""The SQL function <schema>.send(queue, data, options): enqueue from raw SQL, ORMs and triggers."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from conveyor import Conveyor, JobNotFound, JobState


def sql_send(
    conn: psycopg.Connection, schema: str, queue: object, data: str, options: str
) -> uuid.UUID:
    row = conn.execute(
        f'SELECT "{schema}".send(%s, %s::jsonb, %s::jsonb)', [queue, data, options]
    ).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def test_send_from_sql_joins_the_transaction(app: Conveyor, conveyor_dsn: str) -> None:
    with psycopg.connect(conveyor_dsn) as conn:
        rolled_back = sql_send(conn, app.schema, "sql.q", '{"n": 1}', "{}")
        conn.rollback()
        committed = sql_send(conn, app.schema, "sql.q", '{"n": 2}', '{"priority": 4}')
        conn.commit()
    with pytest.raises(JobNotFound):
        app.get_job(rolled_back)
    job = app.get_job(committed)
    assert (job.queue, job.data, job.priority, job.state) == (
        "sql.q",
        {"n": 2},
        4,
        JobState.CREATED,
    )


def test_sql_send_takes_every_option(app: Conveyor, conveyor_dsn: str) -> None:
    app.create_queue("sql.q", retry_limit=9)
    options = (
        '{"start_after": 120, "retry_delay": 3, "retry_backoff": false, "retry_delay_max": 30,'
        ' "expire_in": 60, "retention": 600, "dead_letter": "dead", "group_key": "g"}'
    )
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        job_id = sql_send(conn, app.schema, "sql.q", "[1]", options)
        at = sql_send(conn, app.schema, "sql.q", "null", '{"start_after": "2030-01-01T00:00:00Z"}')
    job = app.get_job(job_id)
    assert job.retry_limit == 9  # the queue's default
    assert (job.retry_delay, job.retry_backoff, job.retry_delay_max) == (3, "fixed", 30)
    assert (job.expire_in, job.retention, job.dead_letter, job.group_key) == (60, 600, "dead", "g")
    assert abs((job.run_at - job.created_at).total_seconds() - 120) < 0.01
    assert app.get_job(at).run_at.year == 2030


def test_sql_send_dedupes_and_throttles(app: Conveyor, conveyor_dsn: str) -> None:
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        a = sql_send(conn, app.schema, "q", "{}", '{"unique_key": "k"}')
        b = sql_send(conn, app.schema, "q", "{}", '{"unique_key": "k"}')
        c = sql_send(conn, app.schema, "q", "{}", '{"singleton_key": "s", "singleton_seconds": 60}')
        d = sql_send(conn, app.schema, "q", "{}", '{"singleton_key": "s", "singleton_seconds": 60}')
    assert a == b != c == d
    assert app.send("q", {}, unique_key="k") == a


def test_sql_send_from_a_trigger(app: Conveyor, conveyor_dsn: str) -> None:
    schema = app.schema
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{schema}".signup (email text)')
        conn.execute(
            f"""CREATE FUNCTION "{schema}".on_signup() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM "{schema}".send('email.welcome', jsonb_build_object('to', NEW.email));
                RETURN NEW;
            END $$"""
        )
        conn.execute(
            f'CREATE TRIGGER welcome AFTER INSERT ON "{schema}".signup '
            f'FOR EACH ROW EXECUTE FUNCTION "{schema}".on_signup()'
        )
        conn.execute(f"INSERT INTO \"{schema}\".signup VALUES ('a@b.c'), ('d@e.f')")
    try:
        jobs = app.list_jobs(queue="email.welcome", order="asc")
        assert sorted(j.data["to"] for j in jobs) == ["a@b.c", "d@e.f"]
    finally:
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(f'DROP TABLE "{schema}".signup')
            conn.execute(f'DROP FUNCTION "{schema}".on_signup()')


@pytest.mark.parametrize(
    ("queue", "data", "options", "message"),
    [
        ("bad name", "{}", "{}", "invalid queue name"),
        (None, "{}", "{}", "invalid queue name"),
        ("q", "{}", '{"priorty": 1}', "unknown job option"),
        ("q", "{}", "[1]", "options must be a JSON object"),
        ("q", "{}", '{"retry_limit": -1}', "check constraint"),
        ("q", "{}", '{"singleton_key": "k"}', "singleton_key needs singleton_seconds"),
        ("q", "{}", '{"unique_key": "k", "unique_mode": "x"}', "unique_mode"),
    ],
)
def test_sql_send_refuses_bad_input(
    app: Conveyor, conveyor_dsn: str, queue: object, data: str, options: str, message: str
) -> None:
    with (
        psycopg.connect(conveyor_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.Error) as err,
    ):
        sql_send(conn, app.schema, queue, data, options)
    assert message in str(err.value)
    assert app.list_jobs() == []


def test_sql_send_payload_limit(app: Conveyor, conveyor_dsn: str) -> None:
    with psycopg.connect(conveyor_dsn) as conn:
        conn.execute("SET conveyor.max_payload_bytes = 50")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            sql_send(conn, app.schema, "q", '"' + "x" * 60 + '"', "{}")
    assert app.list_jobs() == []


def test_sql_send_debounces(app: Conveyor, conveyor_dsn: str) -> None:
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        options = '{"unique_key": "k", "debounce_seconds": 30}'
        first = sql_send(conn, app.schema, "q", '{"v": 1}', options)
        second = sql_send(conn, app.schema, "q", '{"v": 2}', options)
    job = app.get_job(first)
    assert first == second and job.data == {"v": 2}
    assert abs((job.run_at - job.created_at).total_seconds() - 30) < 5
