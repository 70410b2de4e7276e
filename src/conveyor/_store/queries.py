"""The named SQL statements of ``sql/queries/*.sql`` and the migrations, rendered for one schema.

A statement starts with a header line ``-- name: <name> :<kind>``; the store method of the same name
runs it. Kinds: ``:one`` (a row or None), ``:many`` (rows), ``:scalar`` (one value), ``:exec``.
The schema name is the only thing ever formatted into SQL: ``{schema}`` becomes the quoted
identifier and ``{schema_literal}`` the string literal, both produced by psycopg.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from psycopg import sql

HEADER = re.compile(r"^-- name: (\w+) :(one|many|scalar|exec)\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Query:
    """One named statement, rendered for a schema."""

    name: str
    sql: str
    kind: str


def render(template: str, schema: str) -> str:
    """Put the schema's identifier and literal into a SQL template."""
    return template.replace("{schema_literal}", sql.Literal(schema).as_string()).replace(
        "{schema}", sql.Identifier(schema).as_string()
    )


def parse(text: str) -> list[tuple[str, str, str]]:
    """Split a .sql file into (name, kind, statement) triples."""
    found = list(HEADER.finditer(text))
    out = []
    for i, match in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        body = text[match.end() : end].strip()
        # Comments that introduce the next statement belong to it, not to this one.
        lines = body.splitlines()
        while lines and lines[-1].startswith("--"):
            lines.pop()
        out.append((match.group(1), match.group(2), "\n".join(lines).strip().rstrip(";")))
    return out


@cache
def queries(schema: str) -> dict[str, Query]:
    """Every named query, rendered for ``schema``; loaded once per schema and process."""
    folder = resources.files("conveyor") / "sql" / "queries"
    found: dict[str, Query] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, kind, body in parse(entry.read_text(encoding="utf-8")):
            if name in found:
                raise RuntimeError(f"query {name!r} is defined twice")
            found[name] = Query(name, render(body, schema), kind)
    return found


# The statements that only read: run again on a fresh connection when the connection broke under
# them. Anything else may have committed before the break and is never repeated.
READS = frozenset(
    {
        "job_get",
        "job_list",
        "job_list_floor",
        "job_list_dead",
        "job_results",
        "job_next_due",
        "job_dependants",
        "job_get_many",
        "job_flow_root",
        "job_flow",
        "subscription_list",
        "worker_list",
        "worker_count_alive",
        "worker_troubles",
        "queue_live_counts",
        "queue_get",
        "queue_list",
        "queue_stats",
        "job_bulk_count",
        "stats_series",
        "schedule_get",
        "schedule_list",
        "job_held",
        "xact_status",
        "maintain_dead_tuples",
        "doctor_invalid_indexes",
        "doctor_tables",
        "doctor_indexes",
        "doctor_autovacuum",
        "doctor_archive",
        "doctor_old_transactions",
        "doctor_orphaned_jobs",
        "doctor_stuck_waiting",
        "doctor_stale_workers",
    }
)
