"""One row type for a job to insert: the SQL type ``job_input`` (migration 0025), whose fields
are the client's ``JobSpec``'s.

The array signatures of ``insert_jobs`` and ``insert_linked_jobs`` stay for workers of earlier
releases during a rolling deploy; they must store exactly what the row-type functions store.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from conveyor import Conveyor, FrozenClock
from conveyor._store import rows
from conveyor.options import JobSpec, job_spec

NOW = datetime(2031, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)

# The array signature of 0015, as a worker of that release calls it.
OLD_INSERT = """
SELECT ord, id, inserted FROM {schema}.insert_jobs(
    %(id)s::uuid[], %(queue)s::text[], %(data)s::text[]::jsonb[], %(priority)s::integer[],
    %(run_at)s::timestamptz[], %(delay)s::double precision[], %(retry_limit)s::integer[],
    %(retry_delay)s::double precision[], %(retry_backoff)s::text[],
    %(retry_delay_max)s::double precision[], %(expire_in)s::double precision[],
    %(retention)s::double precision[], %(singleton_key)s::text[],
    %(singleton_seconds)s::integer[], %(unique_key)s::text[], %(unique_replace)s::boolean[],
    %(dead_letter)s::text[], %(group_key)s::text[], %(depends_on)s::text[]::jsonb[],
    %(defaults)s::jsonb, %(now)s::timestamptz, %(fair_key)s::text[])
"""
OLD_INSERT_LINKED = """
SELECT ord, id, inserted FROM {schema}.insert_linked_jobs(
    %(id)s::uuid[], %(queue)s::text[], %(data)s::text[]::jsonb[], %(priority)s::integer[],
    %(run_at)s::timestamptz[], %(delay)s::double precision[], %(retry_limit)s::integer[],
    %(retry_delay)s::double precision[], %(retry_backoff)s::text[],
    %(retry_delay_max)s::double precision[], %(expire_in)s::double precision[],
    %(retention)s::double precision[], %(singleton_key)s::text[],
    %(singleton_seconds)s::integer[], %(unique_key)s::text[], %(unique_replace)s::boolean[],
    %(dead_letter)s::text[], %(group_key)s::text[], %(depends_on)s::text[]::jsonb[],
    %(defaults)s::jsonb, %(now)s::timestamptz, %(on_dependency_failure)s::text[],
    %(on_complete)s::text[], %(fair_key)s::text[])
"""

# Options the general path takes (keys, throttles, a fair key, every default overridden).
OPTIONS: list[dict[str, Any]] = [
    {},
    {"priority": 8, "retry_limit": 0, "retry_delay": 0.5, "retry_backoff": False},
    {"retry_delay_max": 0.5, "expire_in": 30, "retention": 0, "start_after": 90.5},
    {"unique_key": "u-{n}", "group_key": "g-1", "dead_letter": "other.dead"},
    {"unique_key": "r-{n}", "unique_mode": "replace", "fair_key": "tenant-a"},
    {
        "singleton_key": "s-{n}",
        "singleton_seconds": 60,
        "start_after": datetime(2032, 1, 2, tzinfo=UTC),
    },
]


def specs_for(queue: str, n: int) -> list[JobSpec]:
    """One job per entry of OPTIONS, keys made unique by ``n``."""
    found = []
    for options in OPTIONS:
        filled = {k: v.format(n=n) if isinstance(v, str) else v for k, v in options.items()}
        found.append(job_spec(queue, {"n": n, "é": [1.5, None]}, filled, 1 << 20))
    return found


def stored(conn: psycopg.Connection[Any], schema: str, ids: list[uuid.UUID]) -> list[Any]:
    """Every column of these jobs but the id and the keys (which differ by n), in order."""
    found = []
    for job_id in ids:
        row = conn.execute(
            f"SELECT to_jsonb(j) - 'id' - 'unique_key' - 'singleton_key' - 'data'"
            f' FROM "{schema}".job j WHERE j.id = %s',
            (job_id,),
        ).fetchone()
        assert row is not None, f"job {job_id} not stored"
        found.append(row[0])
    return found


def test_job_input_has_job_spec_s_fields_in_order(conveyor_dsn: str, conveyor_schema: str) -> None:
    with Conveyor(conveyor_dsn, schema=conveyor_schema) as app:
        app.migrate()
    with psycopg.connect(conveyor_dsn) as conn:
        found = conn.execute(
            "SELECT a.attname FROM pg_attribute a JOIN pg_type t ON t.typrelid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE n.nspname = %s AND t.typname = 'job_input' AND a.attnum > 0"
            " AND NOT a.attisdropped ORDER BY a.attnum",
            (conveyor_schema,),
        ).fetchall()
    assert [name for (name,) in found] == [f.name for f in dataclasses.fields(JobSpec)]
    assert list(rows.SPEC_ARRAYS) == [name for (name,) in found]


def test_the_array_signatures_store_what_the_row_type_stores(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    defaults = {"priority": 1, "retry_limit": 4, "expire_in": 60}
    with (
        Conveyor(conveyor_dsn, schema=conveyor_schema, clock=FrozenClock(NOW), **defaults) as app,
        psycopg.connect(conveyor_dsn, autocommit=True) as conn,
    ):
        app.create_queue("fair", fair=True, retry_delay=7.5)
        app.create_queue("plain", retention=99)
        store = app._stores.store()
        settings = app._settings
        for queue in ("fair", "plain"):
            new = specs_for(queue, 1)
            old = specs_for(queue, 2)
            found = store.job_insert_many(new, settings.defaults, NOW)
            assert all(inserted for _, inserted in found)
            params = rows.insert_params(old, json.dumps(settings.defaults), NOW)
            answered = conn.execute(OLD_INSERT.format(schema=f'"{conveyor_schema}"'), params)
            assert all(r[2] for r in answered.fetchall())
            assert stored(conn, conveyor_schema, [s.id for s in new]) == stored(
                conn, conveyor_schema, [s.id for s in old]
            ), queue

        # The linked form: a dependant and a completion hook, through both signatures.
        parent = job_spec("plain", {}, {}, 1 << 20)
        store.job_insert_many([parent], settings.defaults, NOW)
        depends = {"depends_on": [parent.id], "on_dependency_failure": "run",
                   "on_complete": "hooked"}  # fmt: skip
        new_child = job_spec("plain", {}, depends, 1 << 20)
        old_child = job_spec("plain", {}, depends, 1 << 20)
        store.job_insert_many([new_child], settings.defaults, NOW)
        params = rows.insert_params([old_child], json.dumps(settings.defaults), NOW)
        conn.execute(OLD_INSERT_LINKED.format(schema=f'"{conveyor_schema}"'), params)
        edges = conn.execute(
            f'SELECT job_id, depends_on, on_failure FROM "{conveyor_schema}".job_dependency'
            " ORDER BY job_id = %s",
            (new_child.id,),
        ).fetchall()
        assert sorted(edges) == sorted(
            [(old_child.id, parent.id, "run"), (new_child.id, parent.id, "run")]
        )
        hooks = conn.execute(
            f'SELECT job_id, on_complete FROM "{conveyor_schema}".job_hook'
        ).fetchall()
        assert sorted(hooks) == sorted([(old_child.id, "hooked"), (new_child.id, "hooked")])
        assert stored(conn, conveyor_schema, [new_child.id]) == stored(
            conn, conveyor_schema, [old_child.id]
        )


def test_new_job_sets_the_queue_and_data_and_nothing_else(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    with Conveyor(conveyor_dsn, schema=conveyor_schema) as app:
        app.migrate()
    with psycopg.connect(conveyor_dsn) as conn:
        row = conn.execute(
            f'SELECT to_jsonb(j) FROM "{conveyor_schema}".new_job(%s, %s::jsonb) j',
            ("dead.q", '{"a": [1]}'),
        ).fetchone()
    assert row is not None
    fields = row[0]
    assert uuid.UUID(fields.pop("id"))
    assert fields.pop("queue") == "dead.q"
    assert fields.pop("data") == {"a": [1]}
    assert set(fields.values()) == {None}
