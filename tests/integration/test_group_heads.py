"""Group heads (group_key) along each of the claim's three paths (0021): a queue of few groups is
read group by group; a queue of many groups is walked in claim order; a walk that meets mostly
jobs of held groups gives way to reading every group. On each, a group runs one job at a time, its
head first, and a head that is not due yet holds its group."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from conveyor import Conveyor
from conveyor._store.queries import queries

# claim_group_heads reads at most limit + 32 groups before it walks, and walks at most that many
# jobs before it reads every group: with a limit of 10, more than 42 of either.
LIMIT = 10


def add(
    conn: psycopg.Connection[Any],
    schema: str,
    count: int,
    group: str,
    *,
    run_at: str = "now() - interval '1 hour'",
    priority: str = "0",
) -> None:
    """``count`` jobs of queue 'grouped'; ``group``, ``run_at`` and ``priority`` are SQL over g,
    the row's number (1 to count). Ids follow g, so a group's jobs are in g order."""
    conn.execute(
        f"INSERT INTO {schema}.job (id, queue, data, run_at, retry_limit, retry_delay,"
        " retry_backoff, expire_in, retention, created_at, group_key, priority)"
        " SELECT (lpad(to_hex(nextval('ids')), 8, '0') || '-0000-7000-8000-000000000000')::uuid,"
        f" 'grouped', jsonb_build_object('g', g), {run_at}, 2, 5, 'exponential', 900, 604800,"
        f" now(), {group}, {priority} FROM generate_series(1, {count}) g"
    )


def fetch(conn: psycopg.Connection[Any], schema: str, limit: int = LIMIT) -> list[dict[str, Any]]:
    rows = conn.execute(
        queries(schema)["job_fetch"].sql,
        {"queues": ["grouped"], "worker": uuid.uuid4(), "limit": limit, "now": None},
    ).fetchall()
    return list(rows)


def heads(conn: psycopg.Connection[Any], schema: str) -> dict[str, uuid.UUID]:
    """The first queued job of each group, by (priority, id): the job a claim may take."""
    rows = conn.execute(
        f"SELECT DISTINCT ON (group_key) group_key, id FROM {schema}.job"
        " WHERE state IN ('created', 'retry') ORDER BY group_key, priority DESC, id"
    ).fetchall()
    return {r["group_key"]: r["id"] for r in rows}


def connect(dsn: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(dsn, row_factory=dict_row)
    conn.execute("CREATE TEMPORARY SEQUENCE ids")
    return conn


def test_few_groups_are_read_one_by_one_and_give_their_heads(
    app: Conveyor, conveyor_dsn: str
) -> None:
    with connect(conveyor_dsn) as conn:
        add(conn, app.schema, 30, "'g' || (g % 3)")
        add(conn, app.schema, 5, "'late'", run_at="now() + interval '1 hour'")
        add(conn, app.schema, 5, "'prio'", priority="g")  # its last job comes first
        conn.commit()
        expected = heads(conn, app.schema)
        got = fetch(conn, app.schema)
        conn.commit()
        assert {r["group_key"]: r["id"] for r in got} == {
            k: v for k, v in expected.items() if k != "late"
        }
        assert [r["data"]["g"] for r in got if r["group_key"] == "prio"] == [5]
        assert fetch(conn, app.schema) == []  # every group runs a job: none takes another


def test_many_groups_are_walked_in_claim_order(app: Conveyor, conveyor_dsn: str) -> None:
    with connect(conveyor_dsn) as conn:
        # 200 groups of 3 jobs, sent one round after another; group g7's head is not due (it
        # waits to retry), and the head of g3 runs.
        add(conn, app.schema, 600, "'g' || (g % 200)")
        conn.execute(
            f"UPDATE {app.schema}.job SET state = 'retry', run_at = now() + interval '1 hour'"
            " WHERE id = (SELECT min(id::text)::uuid FROM "
            f"{app.schema}.job WHERE group_key = 'g7')"
        )
        conn.execute(
            f"UPDATE {app.schema}.job SET state = 'active', worker_id = gen_random_uuid(),"
            " attempt = 1 WHERE id = (SELECT min(id::text)::uuid FROM "
            f"{app.schema}.job WHERE group_key = 'g3')"
        )
        conn.commit()
        expected = heads(conn, app.schema)
        taken: dict[str, uuid.UUID] = {}
        for _ in range(25):  # 10 a fetch, until every eligible group runs its head
            got = fetch(conn, app.schema)
            conn.commit()
            for r in got:
                assert r["group_key"] not in taken  # one job at a time per group
                taken[r["group_key"]] = r["id"]
        assert len(taken) == 198 and "g7" not in taken and "g3" not in taken
        assert all(taken[k] == expected[k] for k in taken)  # each group's head


def test_a_walk_past_held_groups_turns_to_every_group(app: Conveyor, conveyor_dsn: str) -> None:
    with connect(conveyor_dsn) as conn:
        # A running group whose 100 queued jobs stand first in claim order (higher priority),
        # then 60 groups of one job: the walk meets only the held group's jobs, so the claim
        # reads every group.
        add(conn, app.schema, 101, "'held'", priority="5")
        conn.execute(
            f"UPDATE {app.schema}.job SET state = 'active', worker_id = gen_random_uuid(),"
            " attempt = 1 WHERE id = (SELECT min(id::text)::uuid FROM "
            f"{app.schema}.job WHERE group_key = 'held')"
        )
        add(conn, app.schema, 60, "'s' || g", priority="g % 2")
        conn.commit()
        got = fetch(conn, app.schema)
        conn.commit()
        # Highest priority first (the odd groups), then by run_at and id.
        assert [r["group_key"] for r in got] == [f"s{g}" for g in range(1, 20, 2)]


def test_two_fetchers_never_take_two_jobs_of_a_group(app: Conveyor, conveyor_dsn: str) -> None:
    with connect(conveyor_dsn) as conn:
        add(conn, app.schema, 2000, "'g' || (g % 100)")
        conn.commit()
    seen: list[tuple[str, int]] = []
    overlaps: list[Any] = []
    schema = app.schema

    def work() -> None:
        with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
            named = queries(schema)
            for _ in range(40):
                got = fetch(conn, schema, limit=7)
                # Two running jobs of one group, as this transaction sees the table.
                overlaps.extend(conn.execute(
                    f"SELECT group_key FROM {schema}.job WHERE state = 'active'"
                    " GROUP BY group_key HAVING count(*) > 1"
                ).fetchall())  # fmt: skip
                conn.commit()
                seen.extend((r["group_key"], r["data"]["g"]) for r in got)
                n = len(got)
                conn.execute(
                    named["job_ack_many"].sql,
                    {"id": [r["id"] for r in got], "worker": [r["worker_id"] for r in got],
                     "attempt": [r["attempt"] for r in got], "outcome": ["completed"] * n,
                     "result": [None] * n, "error": [None] * n, "delay": [None] * n,
                     "now": None},
                )  # fmt: skip
                conn.commit()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    assert len(seen) == len(set(seen)) > 0  # no job twice
    for group in {g for g, _ in seen}:  # each group's jobs in the order they were sent
        mine = [n for g, n in seen if g == group]
        assert mine == sorted(mine)
