"""The migrated schema, described from the catalog, must equal the committed snapshot.

Migrations are the only source of the schema: a change to them that alters the schema shows up
here as a diff to review. Regenerate with ``CONVEYOR_UPDATE_SNAPSHOT=1 pytest <this file>``.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

SNAPSHOT = Path(__file__).with_name("schema_snapshot.txt")

DESCRIBE = """
SELECT 'table ' || c.relname || coalesce(' ' || array_to_string(c.reloptions, ','), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(s)s AND c.relkind IN ('r', 'v', 'p') AND NOT c.relispartition
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = %(s)s AND c.relkind IN ('r', 'v', 'p') AND NOT c.relispartition
  AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint ' || c.relname || ' ' || pg_get_constraintdef(k.oid)
FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
-- PostgreSQL 18 also lists NOT NULL here
WHERE n.nspname = %(s)s AND k.contype <> 'n' AND NOT c.relispartition
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(s)s AND NOT c.relispartition
UNION ALL
SELECT 'function ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') '
       || coalesce(array_to_string(p.proconfig, ','), '')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = %(s)s
ORDER BY 1
"""


def describe(dsn: str, schema: str) -> str:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(DESCRIBE, {"s": schema}).fetchall()
    text = "\n".join(r[0] for r in rows) + "\n"
    return text.replace(f'"{schema}".', "SCHEMA.").replace(f"{schema}.", "SCHEMA.")


def test_migrated_schema_matches_the_snapshot(conveyor_dsn: str, conveyor_schema: str) -> None:
    found = describe(conveyor_dsn, conveyor_schema)
    if os.environ.get("CONVEYOR_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(found)
    assert found == SNAPSHOT.read_text()
