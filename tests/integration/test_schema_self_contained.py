"""Everything a Conveyor schema holds stays inside it (issue 15, item 7): so one schema can be
moved to its own database, or placed on its own node of a distributed PostgreSQL (schema-based
sharding), unchanged. After migrating into a schema of an unusual name, no object of it (table,
view, index, constraint, default, trigger, function) depends on or names an object of another
schema, pg_catalog aside."""

from __future__ import annotations

import re
import uuid

import psycopg
from psycopg import sql

from conveyor import Conveyor
from conveyor._store.queries import queries

# What the catalog records: every dependency of an object of the schema on an object of
# another schema (pg_catalog's types, functions and operators aside).
DEPENDENCIES = """
SELECT o.type || ' ' || o.identity || ' -> ' || r.type || ' ' || r.identity
FROM pg_depend d
CROSS JOIN LATERAL pg_identify_object(d.classid, d.objid, d.objsubid) o
CROSS JOIN LATERAL pg_identify_object(d.refclassid, d.refobjid, d.refobjsubid) r
WHERE d.deptype <> 'e' AND o.schema = %(s)s
  AND r.schema IS NOT NULL AND r.schema NOT IN (%(s)s, 'pg_catalog')
"""

# The text of every definition in the schema, as PostgreSQL prints it (names outside the
# search path come qualified) or, for function bodies, as written.
DEFINITIONS = """
SELECT 'function ' || p.proname, p.prosrc || ' ' || coalesce(array_to_string(p.proconfig, ' '), '')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %(s)s
UNION ALL
SELECT 'view ' || c.relname, pg_get_viewdef(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(s)s AND c.relkind IN ('v', 'm')
UNION ALL
SELECT 'default ' || c.relname || '.' || a.attname, pg_get_expr(d.adbin, d.adrelid)
FROM pg_attrdef d JOIN pg_class c ON c.oid = d.adrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
WHERE n.nspname = %(s)s
UNION ALL
SELECT 'constraint ' || k.conname, pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace WHERE n.nspname = %(s)s
UNION ALL
SELECT 'index ' || c.relname, pg_get_indexdef(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(s)s AND c.relkind = 'i'
UNION ALL
SELECT 'trigger ' || t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(s)s AND NOT t.tgisinternal
"""


def references_elsewhere(conn: psycopg.Connection, schema: str) -> list[str]:
    """Every dependency on, and every qualified name of, another schema in ``schema``."""
    conn.execute("SET search_path = pg_catalog")
    found = [r[0] for r in conn.execute(DEPENDENCIES, {"s": schema})]
    others = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")} | {
        "public",
        "conveyor",
    }
    others -= {schema, "pg_catalog"}
    qualified = re.compile(r'("(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)\s*\.\s*["A-Za-z_]')
    literal = re.compile(r"'(?:[^']|'')*'")  # a setting's name is no schema's
    for what, text in conn.execute(DEFINITIONS, {"s": schema}):
        for match in qualified.finditer(literal.sub("''", text or "")):
            name = match.group(1)
            name = name[1:-1].replace('""', '"') if name.startswith('"') else name.lower()
            if name in others:
                found.append(f"{what} names {name}")
    return found


def test_a_migrated_schema_references_no_other_schema(conveyor_dsn: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    schema, elsewhere = f"odd_shard_{suffix}", f"elsewhere_{suffix}"
    try:
        with Conveyor(conveyor_dsn, schema=schema) as app:
            app.migrate()
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            assert references_elsewhere(conn, schema) == []

            # The check sees what it looks for: a view and a function body that reach into
            # another schema.
            ours, theirs = sql.Identifier(schema), sql.Identifier(elsewhere)
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(theirs))
            conn.execute(sql.SQL("CREATE TABLE {}.t (x int)").format(theirs))
            conn.execute(sql.SQL("CREATE VIEW {}.leak AS SELECT x FROM {}.t").format(ours, theirs))
            conn.execute(
                sql.SQL(
                    "CREATE FUNCTION {}.peek() RETURNS bigint LANGUAGE plpgsql AS "
                    "$$ BEGIN RETURN (SELECT count(*) FROM {}.t); END $$"
                ).format(ours, theirs)
            )
            found = references_elsewhere(conn, schema)
            assert any(f.startswith("view leak") for f in found), found
            assert any(f.startswith("function peek") for f in found), found
    finally:
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            for name in (schema, elsewhere):
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                )


def test_every_notification_goes_to_a_channel_named_by_the_schema(conveyor_dsn: str) -> None:
    """A schema placed on a node of its own takes its channels with it: every pg_notify in the
    schema's functions and in the named queries names its channel after the schema (the
    functions spell it, the queries take it from the store, which derives it)."""
    suffix = uuid.uuid4().hex[:8]
    schema = f"odd_shard_{suffix}"
    notify = re.compile(r"pg_notify\(\s*([^,]+),", re.S)
    try:
        with Conveyor(conveyor_dsn, schema=schema) as app:
            app.migrate()
            store = app._stores.store()
            channels = {store.channel, store.cancel_channel, store.done_channel}
        assert all(
            c == f"conveyor:{schema}" or c.startswith(f"conveyor:{schema}:") for c in channels
        )
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            bodies = conn.execute(
                "SELECT p.proname, p.prosrc FROM pg_proc p WHERE p.pronamespace = %s::regnamespace",
                (schema,),
            ).fetchall()
        found = [(name, m.group(1).strip()) for name, body in bodies for m in notify.finditer(body)]
        assert found  # acks, sends and cancels notify
        ours = f"'conveyor:' || '{schema}'"
        assert [f for f in found if not f[1].startswith(ours)] == []
        named = [
            m.group(1).strip() for q in queries(schema).values() for m in notify.finditer(q.sql)
        ]
        assert named
        assert set(named) <= {"%(channel)s::text", "%(cancel_channel)s::text",
                              "%(done_channel)s::text"}  # fmt: skip
    finally:
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
