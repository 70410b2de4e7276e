"""The hot path keeps to its indexes on a large table: fetch walks job_fetch_free_idx (never a
scan of the whole job table, whatever waits in the future, sits in the history or waits in a
group), group heads are found along the grouped indexes, and the ack finds its rows by primary
key."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from conveyor import Conveyor
from conveyor._store.queries import queries
from conveyor._store.worker_store import WorkerStore
from conveyor.config import VACUUM_DEAD_SHARE, VACUUM_MIN_DEAD

# A scan of the live table that finds the rows it joins by their ids (one key lookup each),
# directly or through a bitmap of job_pkey, or by the tuples the claim locked.
KEYED = re.compile(
    r"(?:on job j(?:_\d+)?\b|Bitmap Index Scan on job_pkey)[^\n]*\n"
    r"\s+(?:Index Cond: \(id = |TID Cond: \(ctid = )"
)


def seed(conn: psycopg.Connection[Any], schema: str) -> None:
    """100,000 jobs scheduled in the future and 200,000 finished, analysed before 20,000 due jobs
    arrive: statistics that say "nothing is due", the trap that once made fetch sort the table."""
    columns = (
        "id, queue, data, run_at, retry_limit, retry_delay, retry_backoff, expire_in, retention, "
        "created_at"
    )
    values = (
        "gen_random_uuid(), 'bench', jsonb_build_object('i', g), {run_at}, 2, 5, 'exponential', "
        "900, 604800, now()"
    )
    future = values.format(run_at="now() + interval '1 day'")
    conn.execute(
        f"INSERT INTO {schema}.job ({columns}) SELECT {future} FROM generate_series(1, 100000) g"
    )
    conn.execute(
        f"INSERT INTO {schema}.job_archive ({columns}, state, finished_at, drop_at) "
        f"SELECT {values.format(run_at='now()')}, 'completed', now(), "
        f"{schema}.archive_drop_at(now() + interval '7 days', now()) "
        "FROM generate_series(1, 200000) g"
    )
    conn.execute(f"ANALYZE {schema}.job")
    conn.execute(f"ANALYZE {schema}.job_archive")
    conn.execute(
        f"INSERT INTO {schema}.job ({columns}) "
        f"SELECT {values.format(run_at='now()')} FROM generate_series(1, 20000) g"
    )


def explain_statements(conn: psycopg.Connection[Any], *, analyze: bool) -> list[str]:
    """Have auto_explain send the plan of every statement this connection runs, functions'
    statements included, as a notice; the list they are appended to. Skips the test where
    auto_explain is not installed."""
    try:
        conn.execute("LOAD 'auto_explain'")
    except psycopg.errors.UndefinedFile:
        pytest.skip("auto_explain is not installed on this server: plans cannot be read")
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
    conn.execute(
        "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
        " SET auto_explain.log_level = notice"
        + ("; SET auto_explain.log_analyze = on" if analyze else "")
    )
    return notices


def completions(claimed: list[dict[str, Any]], worker: uuid.UUID) -> dict[str, Any]:
    """The parameters of job_ack_many (and of job_ack_fetch's outcomes) completing ``claimed``."""
    n = len(claimed)
    return {
        "id": [r["id"] for r in claimed],
        "worker": [worker] * n,
        "attempt": [r["attempt"] for r in claimed],
        "outcome": ["completed"] * n,
        "result": [None] * n,
        "error": [None] * n,
        "delay": [None] * n,
        "now": None,
    }


def test_fetch_and_ack_use_their_indexes_on_a_large_table(app: Conveyor, conveyor_dsn: str) -> None:
    named = queries(app.schema)
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        seed(conn, app.schema)
        conn.commit()
        notices = explain_statements(conn, analyze=False)
        worker = uuid.uuid4()
        for _ in range(6):  # past the point where a cached generic plan takes over
            claimed = conn.execute(
                named["job_fetch"].sql,
                {"queues": ["bench"], "worker": worker, "limit": 100, "now": None},
            ).fetchall()
        assert len(claimed) == 100
        fetch = [n for n in notices if "LATERAL" in n][-1]
        assert "job_fetch_free_idx" in fetch
        assert "Seq Scan on job" not in fetch and "Sort Method" not in fetch.split("LockRows")[1]
        conn.execute(named["job_ack_many"].sql, completions(claimed, worker))
        before = len(notices)
        # The ack of those 100 folded into the next claim (one statement, as a busy worker does).
        params = completions(claimed[:50], worker)
        nothing = {k: [] if isinstance(v, list) else v for k, v in params.items()}
        for i in range(6):  # the acks ride on the last one, once the generic plans are in use
            found = conn.execute(
                named["job_ack_fetch"].sql,
                {**(params if i == 5 else nothing), "queues": ["bench"], "claimer": worker,
                 "limit": 100},
            ).fetchall()  # fmt: skip
        assert len(found) == 100
        folded = notices[before:]
        conn.rollback()
    ack = next(n for n in notices if "DELETE FROM" in n and ".job j" in n)
    assert "job_pkey" in ack and KEYED.search(ack), ack
    assert "Seq Scan on job " not in ack
    folded_fetch = [n for n in folded if "LATERAL" in n][-1]
    assert "job_fetch_free_idx" in folded_fetch and "Seq Scan on job" not in folded_fetch
    folded_ack = next(n for n in folded if "DELETE FROM" in n and ".job j" in n)
    assert KEYED.search(folded_ack) and "Seq Scan on job " not in folded_ack, folded_ack


def test_a_fair_queue_walks_its_keys_and_their_heads_by_index_whatever_one_key_holds(
    app: Conveyor, conveyor_dsn: str
) -> None:
    app.create_queue("fair", fair=True)
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        conn.execute(
            f"INSERT INTO {app.schema}.job (id, queue, data, run_at, retry_limit, retry_delay,"
            " retry_backoff, expire_in, retention, created_at, fair_key)"
            " SELECT gen_random_uuid(), 'fair', '{}', now(), 2, 5, 'exponential', 900, 604800,"
            " now(), CASE WHEN g = 100000 THEN 'B' ELSE 'A' END"
            " FROM generate_series(1, 100000) g"
        )
        conn.execute(f"ANALYZE {app.schema}.job")
        conn.commit()
        notices = explain_statements(conn, analyze=True)
        for _ in range(6):  # past the point where a cached generic plan takes over
            claimed = conn.execute(
                queries(app.schema)["job_fetch"].sql,
                {"queues": ["fair"], "worker": uuid.uuid4(), "limit": 100, "now": None},
            ).fetchall()
            assert len(claimed) == 100
        conn.rollback()
    # The last fetch's steps over the keys.
    walk = [n for n in notices if "ORDER BY j.fair_key LIMIT 1" in n][-3:]
    pick = [n for n in notices if "LATERAL" in n][-1]
    assert len(walk) == 3 and all("job_fair_idx" in n and "Seq Scan" not in n for n in walk)
    assert "job_fair_idx" in pick and "job_fetch_free_idx" not in pick and "Seq Scan" not in pick
    heads = pick.split("LockRows")[1].split("InitPlan")[0]  # each key's jobs, read in order
    assert "job_fair_idx" in heads and "Sort" not in heads
    assert not any("Seq Scan on job " in n for n in notices)


def insert_jobs(conn: psycopg.Connection[Any], schema: str, count: int, group: str) -> None:
    """``count`` jobs of queue 'bench' due an hour ago (ahead of any job sent now), with the
    group_key ``group`` (an SQL expression of g, the row's number; 'NULL' for none)."""
    conn.execute(
        f"INSERT INTO {schema}.job (id, queue, data, run_at, retry_limit, retry_delay,"
        " retry_backoff, expire_in, retention, created_at, group_key)"
        " SELECT gen_random_uuid(), 'bench', '{}', now() - interval '1 hour', 2, 5,"
        f" 'exponential', 900, 604800, now(), {group} FROM generate_series(1, {count}) g"
    )


def explained_fetches(conn: psycopg.Connection[Any], schema: str, limit: int) -> list[str]:
    """The plans of the statements of six fetches of 'bench' (the last ones run the cached
    generic plans), each fetch rolled back; the claimed jobs of the last one."""
    notices = explain_statements(conn, analyze=True)
    conn.commit()  # the settings outlive the rollbacks below
    for _ in range(6):  # past the point where a cached generic plan takes over
        before = len(notices)
        claimed = conn.execute(
            queries(schema)["job_fetch"].sql,
            {"queues": ["bench"], "worker": uuid.uuid4(), "limit": limit, "now": None},
        ).fetchall()
        conn.rollback()
    last = notices[before:]
    last.append(repr([(r["group_key"], r["id"]) for r in claimed]))
    return last


def test_ungrouped_claims_never_walk_the_grouped_jobs_queued_ahead(
    app: Conveyor, conveyor_dsn: str
) -> None:
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        insert_jobs(conn, app.schema, 20000, "'g' || (g % 100)")
        conn.execute(f"ANALYZE {app.schema}.job")
        conn.commit()
        app.send_batch([("bench", {"i": i}) for i in range(200)])
        plans = explained_fetches(conn, app.schema, 100)
    claim = next(n for n in plans if "LATERAL" in n)
    # The claim's walk reads its 100 jobs and nothing else: not one of the 20,000 grouped jobs
    # ahead of them (with job_fetch_idx it read them all, each checked in the heap).
    walk = claim.split("LockRows")[1]
    assert "job_fetch_free_idx" in walk and "Seq Scan" not in claim
    assert "Rows Removed by Filter" not in walk and " rows=100 loops=1)" in walk
    assert "'g" not in plans[-1]  # the claim took ungrouped jobs only


def test_group_heads_are_found_along_the_grouped_indexes(app: Conveyor, conveyor_dsn: str) -> None:
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        # One group of 10,000 jobs (a loose scan finds its head at once), and 1,000 groups of 10
        # (more groups than a fetch has room for: the walk of job_fetch_group_idx finds them).
        insert_jobs(conn, app.schema, 10000, "'big'")
        conn.execute(f"ANALYZE {app.schema}.job")
        conn.commit()
        few = explained_fetches(conn, app.schema, 50)
        insert_jobs(conn, app.schema, 10000, "'g' || (g % 1000)")
        conn.execute(f"ANALYZE {app.schema}.job")
        conn.commit()
        many = explained_fetches(conn, app.schema, 50)
    assert few[-1].count("'big'") == 1  # one job of the group, and only one
    scan = next(n for n in few if "WITH RECURSIVE g" in n)
    assert "job_group_idx" in scan and "Seq Scan" not in scan and "Sort" not in scan
    assert " rows=2 loops=1)" in scan.split("Recursive Union")[0]  # the group, then the end
    assert not any("Seq Scan on job " in n for n in few)
    assert many[-1].count("'g") == 49 and many[-1].count("'big'") == 1  # a head per group
    walk = next(n for n in many if "j.id = (SELECT k.id" in n)
    assert "job_fetch_group_idx" in walk and "job_group_idx" in walk
    assert "Seq Scan" not in walk and "Sort" not in walk
    assert not any("Seq Scan on job " in n for n in many)


def test_a_claim_joins_its_jobs_back_by_key_whatever_other_queues_hold(
    app: Conveyor, conveyor_dsn: str
) -> None:
    """100,000 older jobs of another queue sit at the start of the primary key: the claim's
    cached generic plan once sorted the 100 picked ids and merge-joined them along job_pkey from
    its start, reading every one of those entries (55 ms for a claim of about one)."""
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        conn.execute(
            f"INSERT INTO {app.schema}.job (id, queue, data, run_at, retry_limit, retry_delay,"
            " retry_backoff, expire_in, retention, created_at)"
            " SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'other',"
            " '{}', now(), 2, 5, 'exponential', 900, 604800, now()"
            " FROM generate_series(1, 100000) g"
        )
        conn.execute(f"ANALYZE {app.schema}.job")
        conn.commit()
        app.send_batch([("bench", {"i": i}) for i in range(200)])
        plans = explained_fetches(conn, app.schema, 100)
    claim = next(n for n in plans if "UPDATE" in n and "picked" in n)
    assert "Merge Join" not in claim and KEYED.search(claim), claim


def claim_and_ack(
    conn: psycopg.Connection[Any], schema: str, worker: uuid.UUID, notices: list[str]
) -> str:
    """Claim 100 bench jobs and acknowledge them as completed; the plan of the ack's DELETE."""
    named = queries(schema)
    claimed = conn.execute(
        named["job_fetch"].sql, {"queues": ["bench"], "worker": worker, "limit": 100, "now": None}
    ).fetchall()
    assert len(claimed) == 100
    before = len(notices)
    conn.execute(named["job_ack_many"].sql, completions(claimed, worker))
    return next(n for n in notices[before:] if "DELETE FROM" in n and ".job j" in n)


async def test_an_ack_planned_on_an_empty_table_finds_its_rows_by_key_once_maintenance_saw_it_fill(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    """A worker's connection plans ack_jobs once, at its first ack. Planned while the live table
    was empty (as its last ANALYZE saw it), the ack scans the whole table for the rows it names,
    and goes on doing so as a burst of sends fills it: inserts leave no dead tuples, so nothing
    used to VACUUM it. Maintenance now vacuums a live table that outgrew the planner's count,
    and the new count makes every connection plan again."""
    # A schema of its own: a live table that never held a row has no page, as in production
    # before the first burst (pages other tests emptied would change the planner's guess).
    schema = scratch_schema
    app = Conveyor(conveyor_dsn, schema=schema)
    app.migrate()
    store = WorkerStore(conveyor_dsn, schema, min_size=0, max_size=1)
    try:
        with psycopg.connect(conveyor_dsn, row_factory=dict_row, autocommit=True) as conn:
            conn.execute(f"ANALYZE {schema}.job")  # empty: the planner counts 0 rows
            notices = explain_statements(conn, analyze=False)
            worker = uuid.uuid4()
            app.send_batch([("bench", {"i": i}) for i in range(100)])
            claim_and_ack(conn, schema, worker, notices)  # the plan is made here, and kept
            conn.execute(
                f"INSERT INTO {schema}.job (id, queue, data, run_at, retry_limit, retry_delay,"
                " retry_backoff, expire_in, retention, created_at)"
                " SELECT gen_random_uuid(), 'bench', '{}', now(), 2, 5, 'exponential', 900,"
                " 604800, now() FROM generate_series(1, 30000)"
            )
            conn.execute("SELECT pg_stat_force_next_flush()")
            # The trap this guards against: "Seq Scan on job j" in this plan. Not asserted: in
            # parallel runs the plan was sometimes keyed already, most likely planned again
            # after a cache reset (other tests' DDL can overflow an idle backend's queue of
            # invalidations; not verified).
            claim_and_ack(conn, schema, worker, notices)
            assert await store.vacuum_churned(VACUUM_MIN_DEAD, VACUUM_DEAD_SHARE) == ["job"]
            keyed = claim_and_ack(conn, schema, worker, notices)
            assert KEYED.search(keyed) and "Seq Scan on job " not in keyed, keyed
            # Counted again, the table no longer looks outgrown: no VACUUM at every pass.
            assert await store.vacuum_churned(VACUUM_MIN_DEAD, VACUUM_DEAD_SHARE) == []
    finally:
        await store.close()
        app.close()


# ``count`` due bench jobs, in group ``group`` and of fair key ``fair`` (SQL expressions of g,
# the job's number).
DUE_JOBS = (
    "INSERT INTO {schema}.job (id, queue, data, run_at, retry_limit, retry_delay, retry_backoff,"
    " expire_in, retention, created_at, group_key, fair_key) SELECT gen_random_uuid(), 'bench',"
    " '{{}}', now(), 2, 5, 'exponential', 900, 604800, now(), {group}, {fair}"
    " FROM generate_series(1, {count}) g"
)


def ack_fetch(
    conn: psycopg.Connection[Any], schema: str, worker: uuid.UUID, claimed: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One job_ack_fetch as a busy worker runs it: acknowledge ``claimed``, claim up to 100
    bench jobs."""
    params = {**completions(claimed, worker), "queues": ["bench"], "claimer": worker, "limit": 100}
    return conn.execute(queries(schema)["job_ack_fetch"].sql, params).fetchall()


def test_a_claim_and_an_ack_planned_after_a_vacuum_saw_no_job_read_a_backlog_by_key(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    """A worker that keeps up leaves the live table empty for moments, and a VACUUM then
    records 0 rows: plans made afterwards take the table for one row, and once put it on the
    outer side of the claim's and the ack's nested loops, a walk of every job for every id of
    the batch (a claim-and-ack of 100 jobs took 1.6 s over 50,000 waiting). Whatever side the
    live table takes, it is read by the batch's ids."""
    schema = scratch_schema
    Conveyor(conveyor_dsn, schema=schema).migrate()
    with psycopg.connect(conveyor_dsn, row_factory=dict_row, autocommit=True) as conn:
        conn.execute(DUE_JOBS.format(schema=schema, count=2000, group="NULL", fair="NULL"))
        conn.execute(f"DELETE FROM {schema}.job")
        conn.execute(f"VACUUM {schema}.job")
        counted = conn.execute(
            "SELECT reltuples, relpages FROM pg_class WHERE oid = %s::regclass", [f"{schema}.job"]
        ).fetchone()
        assert counted is not None and counted["reltuples"] == 0 and counted["relpages"] > 0
        notices = explain_statements(conn, analyze=False)
        worker = uuid.uuid4()
        for _ in range(6):  # planned on the empty table, and kept
            ack_fetch(conn, schema, worker, [])
        conn.execute(DUE_JOBS.format(schema=schema, count=20000, group="NULL", fair="NULL"))
        claimed = ack_fetch(conn, schema, worker, [])
        assert len(claimed) == 100
        before = len(notices)
        assert len(ack_fetch(conn, schema, worker, claimed)) == 100
    claim = next(n for n in reversed(notices) if "UPDATE" in n and "picked" in n)
    ack = next(n for n in notices[before:] if "DELETE FROM" in n and ".job j" in n)
    assert KEYED.search(claim), claim
    assert KEYED.search(ack), ack


def test_an_ack_planned_after_a_vacuum_saw_no_job_matches_a_large_batch_by_hash(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    """Planned while the live table looked empty, the ack took its batch's ids for one row and
    matched them to the batch by a nested loop: every row against every ack, so a batch n times
    larger cost n x n times more (5,000 acks took 6 s), and under load a slow ack let the next
    batch grow until acks took a minute. The rows and the batch now meet in a hash join."""
    schema = scratch_schema
    Conveyor(conveyor_dsn, schema=schema).migrate()
    named = queries(schema)
    with psycopg.connect(conveyor_dsn, row_factory=dict_row, autocommit=True) as conn:
        conn.execute(DUE_JOBS.format(schema=schema, count=2000, group="NULL", fair="NULL"))
        conn.execute(f"DELETE FROM {schema}.job")
        conn.execute(f"VACUUM {schema}.job")
        notices = explain_statements(conn, analyze=False)
        worker = uuid.uuid4()
        for _ in range(6):  # planned on the empty table, and kept
            conn.execute(named["job_ack_many"].sql, completions([], worker))
        conn.execute(DUE_JOBS.format(schema=schema, count=3000, group="NULL", fair="NULL"))
        claimed = conn.execute(
            named["job_fetch"].sql, {"queues": ["bench"], "worker": worker, "limit": 3000,
                                     "now": None},
        ).fetchall()  # fmt: skip
        assert len(claimed) == 3000
        before = len(notices)
        acked = conn.execute(named["job_ack_many"].sql, completions(claimed, worker)).fetchall()
        assert len(acked) == 3000
    ack = next(n for n in notices[before:] if "DELETE FROM" in n and ".job j" in n)
    assert KEYED.search(ack), ack
    assert "Nested Loop" not in ack and "Hash Join" in ack, ack


def test_a_worker_s_checks_of_its_attempts_compare_sets_whatever_the_plan(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    """job_held and job_orphaned compare the attempts a worker names with those it holds. As
    joins, their generic plans made while the live table looked empty compared every job with
    every attempt (5,000 running jobs: 1 s and 2 s); as INTERSECT and EXCEPT they hash or sort."""
    schema = scratch_schema
    Conveyor(conveyor_dsn, schema=schema).migrate()
    named = queries(schema)
    worker = uuid.uuid4()
    running = (
        f"INSERT INTO {schema}.job (id, queue, data, state, attempt, worker_id, retry_limit,"
        " retry_delay, retry_backoff, expire_in, retention, created_at, started_at, run_at)"
        " SELECT gen_random_uuid(), 'bench', '{}', 'active', 1, %s, 2, 5, 'exponential', 900,"
        " 604800, now(), now(), now() FROM generate_series(1, %s) RETURNING id"
    )
    with psycopg.connect(conveyor_dsn, row_factory=dict_row, autocommit=True) as conn:
        conn.execute(running, [worker, 2000])
        conn.execute(f"DELETE FROM {schema}.job")
        conn.execute(f"VACUUM {schema}.job")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        notices = explain_statements(conn, analyze=False)
        ids = [r["id"] for r in conn.execute(running, [worker, 3000]).fetchall()]
        params = {"worker": worker, "id": ids, "attempt": [1] * len(ids)}
        before = len(notices)
        assert conn.execute(named["job_orphaned"].sql, params, prepare=True).fetchall() == []
        held = conn.execute(named["job_held"].sql, params, prepare=True).fetchall()
        assert {r["id"] for r in held} == set(ids)
    plans = notices[before:]  # one plan each
    assert len(plans) == 2, plans
    for plan in plans:
        assert "SetOp" in plan and "Nested Loop" not in plan, plan


def test_a_fair_claim_planned_after_a_vacuum_saw_no_job_walks_the_keys_along_their_index(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    """The fair claim finds the queue's keys one after another, the next key above the last.
    Planned after a VACUUM that counted no job, that step read the fetch index instead of the
    keys' index: every waiting job of the queue at each step (1.1 s per claim of 100 over
    50,000 jobs of 50 keys). It now follows job_fair_idx whatever the statistics say."""
    schema = scratch_schema
    app = Conveyor(conveyor_dsn, schema=schema)
    app.migrate()
    app.create_queue("bench", fair=True)
    app.close()
    with psycopg.connect(conveyor_dsn, row_factory=dict_row, autocommit=True) as conn:
        conn.execute(DUE_JOBS.format(schema=schema, count=2000, group="NULL", fair="'k'"))
        conn.execute(f"DELETE FROM {schema}.job")
        conn.execute(f"VACUUM {schema}.job")
        notices = explain_statements(conn, analyze=False)
        worker = uuid.uuid4()
        for _ in range(6):  # planned on the empty table, and kept
            ack_fetch(conn, schema, worker, [])
        conn.execute(
            DUE_JOBS.format(schema=schema, count=20000, group="NULL", fair="'k' || (g % 50)")
        )
        before = len(notices)
        assert len(ack_fetch(conn, schema, worker, [])) == 100
    walk = [n for n in notices[before:] if "j.fair_key > v_cur" in n]  # the steps after the first
    assert len(walk) >= 49, len(walk)
    assert all("job_fair_idx" in n and "job_fetch_free_idx" not in n for n in walk), walk[0]


def test_a_grouped_claim_planned_on_a_few_jobs_reads_a_burst_along_its_indexes(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    """Planned while the live table held a few thousand jobs, the claim of group heads once
    sorted every grouped job at each step of its walk over the groups (17 s for 100 heads over
    50,000 jobs in 1,000 groups), and its UPDATE could walk the whole table: now the walk keeps
    to the group index's order and the UPDATE takes the locked tuples by ctid."""
    schema = scratch_schema
    Conveyor(conveyor_dsn, schema=schema).migrate()
    in_groups = "'g' || (g % 1000)"
    with psycopg.connect(conveyor_dsn, row_factory=dict_row, autocommit=True) as conn:
        conn.execute(DUE_JOBS.format(schema=schema, count=20000, group=in_groups, fair="NULL"))
        conn.execute(
            f"DELETE FROM {schema}.job WHERE id IN (SELECT id FROM {schema}.job OFFSET 5000)"
        )
        conn.execute(f"VACUUM {schema}.job")
        notices = explain_statements(conn, analyze=False)
        worker = uuid.uuid4()
        for _ in range(6):  # planned on 5,000 jobs, and kept
            ack_fetch(conn, schema, worker, [])
        conn.execute(DUE_JOBS.format(schema=schema, count=20000, group=in_groups, fair="NULL"))
        before = len(notices)
        assert len(ack_fetch(conn, schema, worker, [])) == 100
    walk = next(n for n in notices[before:] if "WITH RECURSIVE g" in n)
    claim = next(n for n in notices[before:] if "WITH head AS" in n)
    assert "Sort" not in walk, walk
    assert "TID Cond: (ctid = ANY" in claim, claim


def archive_rows(
    conn: psycopg.Connection[Any], schema: str, count: int, ended: datetime | None = None
) -> None:
    """``count`` archived jobs, never analyzed (autovacuum analyzes a partition only after its
    changes reach a share of it, and a new partition fills within its minute): finished over
    the last minute, in the partition that takes a 120 s retention, as a busy worker leaves
    them; or, given ``ended``, all finished then and in the partition that starts then."""
    finished = "now() - g * interval '60 seconds' / %(count)s" if ended is None else "%(ended)s"
    drop_at = (
        f"{schema}.archive_drop_at(now() + interval '120 seconds', now())"
        if ended is None
        else "%(ended)s"
    )
    conn.execute(
        f"INSERT INTO {schema}.job_archive (id, queue, state, data, run_at, retry_limit,"
        " retry_delay, retry_backoff, expire_in, retention, created_at, started_at, finished_at,"
        " drop_at)"
        " SELECT gen_random_uuid(), 'bench', 'completed', '{}', now(), 2, 5, 'exponential', 900,"
        f" 120, now(), now(), {finished}, {drop_at}"
        " FROM generate_series(1, %(count)s) g",
        {"count": count, "ended": ended},
    )


def test_the_counters_read_what_finished_since_their_watermark_along_the_index(
    app: Conveyor, conveyor_dsn: str
) -> None:
    """The rollup and the stats reads look at the rows finished since the watermark (a second
    of them, at most a chunk). In a partition never analyzed, "finished after X" was guessed to
    hold a third of its rows, so the rollup's search for its chunk's end sorted the newest
    partitions with two parallel workers: 0.3-0.65 s on both cores about once a second, at
    6,250 jobs/s. Both look the rows up by their finished_at index, and never in parallel."""
    named = queries(app.schema)
    app.send("bench", {})  # the stats read the queues there are
    with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
        archive_rows(conn, app.schema, 200_000)
        conn.execute(
            f"INSERT INTO {app.schema}.stats_rollup (id, rolled_to)"
            " VALUES (true, now() - interval '1 second')"
            " ON CONFLICT (id) DO UPDATE SET rolled_to = EXCLUDED.rolled_to"
        )
        conn.commit()
        notices = explain_statements(conn, analyze=False)
        bounds = {"bounds": [10.0, 100.0], "tail": 10_000}
        conn.execute(named["queue_stats"].sql, {"name": None, "now": None, **bounds})
        conn.execute("SELECT 1")  # its plan arrives with the next statement's answer
        read = next(n for n in notices if "finished_at >" in n)
        before = len(notices)
        params = {"now": None, "lag": 0.5, "hold": 60.0, "chunk": 50_000, "bounds": [10.0]}
        conn.execute(named["stats_rollup"].sql, params)
        conn.execute("SELECT 1")
        rolled = [n for n in notices[before:] if "finished_at >" in n]
        conn.rollback()
    assert any("OFFSET" in n for n in rolled) and any("finished_counts" in n for n in rolled)
    for plan in [read, *rolled]:
        # An empty partition (the planner knows it has no page) may be "scanned": it holds none.
        scanned = re.findall(r"Seq Scan on (job_archive_\S+) .*rows=(\d+)", plan)
        assert [name for name, rows in scanned if int(rows) > 1] == [], plan
        assert "Gather" not in plan, plan
        assert "finished_at_idx on job_archive_" in plan, plan


def test_a_dropped_partition_s_hooks_are_found_by_its_id_index(
    app: Conveyor, conveyor_dsn: str
) -> None:
    """Before a partition is dropped, the completion hooks of its jobs are deleted. Joined the
    other way round, one hook pending anywhere (a job still running with an on_complete) made
    that delete read the whole partition, every minute: 145 ms for a minute of 7,600 jobs/s.
    The few hooks are looked up in the partition's id index instead."""
    s = app.schema
    with psycopg.connect(conveyor_dsn, row_factory=dict_row, autocommit=True) as conn:
        archive_rows(conn, s, 100_000)
        conn.execute(
            f"INSERT INTO {s}.job_hook (job_id, on_complete) VALUES (gen_random_uuid(), 'x')"
        )
        [partition] = conn.execute(
            f"SELECT DISTINCT tableoid::regclass::text AS name FROM {s}.job_archive"
        ).fetchall()
        name = partition["name"].rsplit(".", 1)[-1]
        notices = explain_statements(conn, analyze=False)
        text = psycopg.sql.SQL(queries(s)["archive_drop_hooks"].sql).format(
            partition=psycopg.sql.Identifier(name)
        )
        conn.execute(text)
        conn.execute("SELECT 1")
    [plan] = [n for n in notices if "job_hook" in n]
    assert f"Seq Scan on {name}" not in plan, plan
    assert f"{name}_id_idx" in plan, plan


def test_the_owner_s_drop_function_finds_the_hooks_by_the_id_index_too(
    app: Conveyor, conveyor_dsn: str
) -> None:
    """The same delete inside archive_drop_partition, which drops partitions for a role that
    does not own them."""
    s = app.schema
    with psycopg.connect(conveyor_dsn, row_factory=dict_row, autocommit=True) as conn:
        conn.execute(f"SELECT {s}.archive_extend(600, now() - interval '1 hour')")
        [ended] = conn.execute(
            f"SELECT name, lo FROM {s}.archive_partition ORDER BY lo LIMIT 1"
        ).fetchall()
        archive_rows(conn, s, 100_000, ended["lo"])
        conn.execute(
            f"INSERT INTO {s}.job_hook (job_id, on_complete) VALUES (gen_random_uuid(), 'x')"
        )
        notices = explain_statements(conn, analyze=False)
        dropped = conn.execute(
            f"SELECT {s}.archive_drop_partition(%s, NULL) AS dropped", (ended["name"],)
        ).fetchone()
        conn.execute("SELECT 1")
    assert dropped == {"dropped": True}
    [plan] = [n for n in notices if "job_hook" in n and "archive_drop_partition" not in n]
    assert f"Seq Scan on {ended['name']}" not in plan, plan
    assert f"{ended['name']}_id_idx" in plan, plan
