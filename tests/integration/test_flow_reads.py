"""Reading along flows (what the dashboard's job page and flow view show) and the start times a
failed attempt records, against a real PostgreSQL."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

import psycopg
import pytest
from psycopg import sql

from conveyor import Conveyor, Job, JobState
from conveyor.errors import InvalidOption, JobNotFound


def test_a_flow_is_read_from_any_of_its_jobs_top_first(app: Conveyor) -> None:
    parent = app.flow(
        ("report", {"part": "all"}),
        [
            {"queue": "part", "data": 1, "children": [("fetch", {"page": 1})]},
            ("part", 2),
        ],
    )
    below = app.get_job(parent).depends_on
    leaf = app.get_job(below[0]).depends_on[0]
    for start in (parent, below[1], leaf):
        flow = app.get_flow(start)
        assert flow[0].id == parent
        assert {j.id for j in flow} == {parent, *below, leaf}
    # Level by level: the parent, its two children, then the grandchild.
    assert app.get_flow(leaf)[-1].id == leaf
    assert [j.id for j in app.get_flow(parent, limit=2)] == [parent, below[0]]
    lone = app.send("alone", {})
    assert [j.id for j in app.get_flow(lone)] == [lone]


def test_dependants_are_found_after_the_dependency_finished(app: Conveyor) -> None:
    @app.job("dep")
    def dep(job: Job) -> str:
        return "ok"

    first = app.send("dep", {})
    after = app.send("later", {}, depends_on=[first])
    also = app.send("later", {}, depends_on=[first], start_after=60)
    assert [j.id for j in app.list_dependants(first)] == [after, also]
    app.drain(["dep"])
    # The pending edges are gone once the dependency completed; the link is still read.
    assert app.get_job(first).state is JobState.COMPLETED
    found = app.list_dependants(first)
    assert [j.id for j in found] == [after, also]
    assert {j.state for j in found} == {JobState.CREATED}
    assert app.list_dependants(after) == []
    assert [j.id for j in app.list_dependants(first, limit=1)] == [after]


def test_dependants_are_looked_up_by_index(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    job_id = app.send("indexed", {})
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        # job_history is a view: its dead letters' table and each archive partition have the
        # index (a partition's is named after the partition).
        for table, tables in (("job", ["job"]), ("job_history", ["job_archive_", "job_dead"])):
            plan = conn.execute(
                sql.SQL(
                    "EXPLAIN SELECT id FROM {}.{} WHERE depends_on IS NOT NULL "
                    "AND depends_on @> ARRAY[%s::uuid]"
                ).format(sql.Identifier(conveyor_schema), sql.Identifier(table)),
                [job_id],
            ).fetchall()
            text = "\n".join(r[0] for r in plan)
            assert "Seq Scan" not in text, text
            for name in tables:
                assert re.search(rf"{name}\w*_depends_on_idx", text), text


def test_bad_ids_and_limits_are_refused(app: Conveyor) -> None:
    with pytest.raises(JobNotFound):
        app.get_flow(uuid.uuid4())
    with pytest.raises(InvalidOption):
        app.get_flow("not-a-uuid")
    with pytest.raises(InvalidOption):
        app.list_dependants(uuid.uuid4(), limit=0)


def test_a_failed_attempt_records_when_it_was_claimed_and_started(app: Conveyor) -> None:
    @app.job("breaks", retry_limit=0)
    def breaks(job: Job) -> None:
        raise RuntimeError("no")

    job_id = app.send("breaks", {})
    app.drain(["breaks"])
    job = app.get_job(job_id)
    error = job.errors[-1]
    claimed = datetime.fromisoformat(error["claimed_at"])
    started = datetime.fromisoformat(error["started_at"])
    ended = datetime.fromisoformat(error["at"])
    assert claimed == job.started_at
    assert claimed <= started <= ended


def test_jobs_are_read_by_id_in_the_order_given(app: Conveyor) -> None:
    @app.job("done.soon")
    def done(job: Job) -> None:
        return None

    first = app.send("done.soon", {})
    app.drain(["done.soon"])
    second = app.send("queued.still", {})
    missing = uuid.uuid4()
    found = app.get_jobs([second, missing, str(first)])
    assert [(j.id, j.state) for j in found] == [
        (second, JobState.CREATED),
        (first, JobState.COMPLETED),
    ]
    assert app.get_jobs([]) == []
    with pytest.raises(InvalidOption):
        app.get_jobs(["nope"])
