"""Maintenance analyzes the partitioned history itself (autovacuum never analyzes a partitioned
parent), and since that ANALYZE analyzes every partition too, it takes a small sample of the
columns the statements filter by: over a large history the full ANALYZE took a core for 1.3 s
every ten minutes."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from conveyor import Conveyor
from conveyor._store.worker_store import WorkerStore

ARCHIVED = (
    "INSERT INTO {s}.job_archive (id, queue, data, run_at, retry_limit, retry_delay,"
    " retry_backoff, expire_in, retention, created_at, state, finished_at, drop_at)"
    " SELECT gen_random_uuid(), 'q' || (g % 50), jsonb_build_object('i', g), now(), 2, 5,"
    " 'exponential', 900, 120, now() - make_interval(secs => g), 'completed', now(),"
    " {s}.archive_drop_at(now() + interval '2 minutes', now()) FROM generate_series(1, 20000) g"
)


def inherited_stats(conn: psycopg.Connection[Any], schema: str) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT attname, cardinality(histogram_bounds::text::text[]) AS bounds FROM pg_stats"
        " WHERE schemaname = %s AND tablename = 'job_archive' AND inherited",
        [schema],
    ).fetchall()
    return {row["attname"]: row["bounds"] for row in rows}


async def test_the_history_is_analyzed_on_a_small_sample_of_the_columns_queries_filter_by(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    schema = scratch_schema
    Conveyor(conveyor_dsn, schema=schema).migrate()
    with psycopg.connect(conveyor_dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(ARCHIVED.format(s=schema))
    store = WorkerStore(conveyor_dsn, schema, min_size=1, max_size=1)
    try:
        await store.archive_analyze(None)
        async with store.connection() as used:  # the pool's one connection, set back
            cur = await used.execute("SHOW default_statistics_target")
            assert await cur.fetchone() == ("100",)
    finally:
        await store.close()
    with psycopg.connect(conveyor_dsn, autocommit=True, row_factory=dict_row) as conn:
        stats = inherited_stats(conn, schema)
    assert {"id", "queue", "state", "created_at", "finished_at", "drop_at"} <= stats.keys()
    assert "data" not in stats and "result" not in stats
    assert stats["created_at"] is not None and stats["created_at"] <= 11  # a target of 10
