"""Schema migrations: concurrent migrators, the printed SQL, checks, and refusing drift."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from conveyor import Conveyor, SchemaOutOfDate
from conveyor._store.migrations import migrations, split_statements
from conveyor.errors import MigrationChecksumMismatch


def cli(dsn: str, schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONVEYOR_DATABASE_URL": dsn, "CONVEYOR_SCHEMA": schema}
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def tables(dsn: str, schema: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
            "ORDER BY 1",
            [schema],
        ).fetchall()
    return [r[0] for r in rows]


def test_migrate_is_idempotent(conveyor_dsn: str, scratch_schema: str) -> None:
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        assert not app.migration_status().current
        assert app.migrate() == [f"{m.version:04d}_{m.name}" for m in migrations()]
        assert app.migrate() == []
        status = app.migration_status()
    assert status.current and status.applied == tuple(m.version for m in migrations())
    assert "job" in tables(conveyor_dsn, scratch_schema)


def test_twenty_concurrent_migrations_leave_one_schema(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    env = {**os.environ, "CONVEYOR_DATABASE_URL": conveyor_dsn, "CONVEYOR_SCHEMA": scratch_schema}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "migrate", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(20)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 20, [err for _, err in outputs]
    applied = [out for out, _ in outputs if "0001_initial" in out]
    assert len(applied) == 1  # exactly one process applied the file, the others found it done
    with psycopg.connect(conveyor_dsn) as conn:
        versions = conn.execute(f'SELECT version FROM "{scratch_schema}".migration').fetchall()
    assert versions == [(m.version,) for m in migrations()]
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        assert app.migration_status().current
        job_id = app.send("after.migrate", {"ok": True})
        assert app.get_job(job_id).data == {"ok": True}


def test_check_and_sql_from_the_cli(conveyor_dsn: str, scratch_schema: str) -> None:
    pending = cli(conveyor_dsn, scratch_schema, "migrate", "--check")
    assert pending.returncode == 1
    assert "0001_initial" in pending.stdout
    printed = cli(conveyor_dsn, scratch_schema, "migrate", "--sql")
    assert printed.returncode == 0
    assert tables(conveyor_dsn, scratch_schema) == []  # printing changes nothing
    # A DBA can apply the printed SQL by hand, as psql runs a file (statement by statement: a
    # no-transaction file's CREATE INDEX CONCURRENTLY cannot run in a transaction); the result
    # is a current schema.
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        for statement in split_statements(printed.stdout):
            conn.execute(statement)  # type: ignore[arg-type]
    current = cli(conveyor_dsn, scratch_schema, "migrate", "--check")
    assert current.returncode == 0, current.stderr
    assert cli(conveyor_dsn, scratch_schema, "migrate").stdout.strip().endswith("is up to date")


def test_migrate_creates_the_tables(conveyor_dsn: str, scratch_schema: str) -> None:
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        app.migrate()
    by_app = tables(conveyor_dsn, scratch_schema)
    assert by_app == sorted(
        ["archive_partition", "archive_status", "job", "job_archive", "job_dead",
         "job_dependency", "job_hook", "leader", "migration", "queue", "queue_fair", "queue_pause",
         "queue_version",
         "schedule", "schedule_tick", "stats_backlog", "stats_minute", "stats_rollup",
         "stats_total", "stats_unkept", "subscription", "throttle", "waiter", "worker"]
    )  # fmt: skip


def test_an_edited_migration_is_refused(conveyor_dsn: str, scratch_schema: str) -> None:
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        app.migrate()
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE \"{scratch_schema}\".migration SET checksum = 'x'")
        with pytest.raises(MigrationChecksumMismatch):
            app.migrate()


def test_a_newer_database_is_reported(conveyor_dsn: str, scratch_schema: str) -> None:
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        app.migrate()
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO \"{scratch_schema}\".migration VALUES (999, 'future', 'x', now())"
            )
        status = app.migration_status()
    assert status.unknown == (999,) and not status.current
    assert cli(conveyor_dsn, scratch_schema, "migrate", "--check").returncode == 1


def test_using_an_unmigrated_schema_says_what_to_do(conveyor_dsn: str, scratch_schema: str) -> None:
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app, pytest.raises(SchemaOutOfDate):
        app.send("q", {})


def test_cli_errors_are_one_line(conveyor_dsn: str, scratch_schema: str) -> None:
    bad_schema = cli(conveyor_dsn, "Not Valid", "migrate")
    assert bad_schema.returncode == 2
    assert bad_schema.stderr.count("\n") == 1 and "schema" in bad_schema.stderr
    unreachable = cli("postgresql://nobody@127.0.0.1:9/none", scratch_schema, "migrate")
    assert unreachable.returncode == 3
    assert unreachable.stderr.startswith("conveyor: error: database unavailable:")
    assert unreachable.stderr.count("\n") == 1


def test_every_migration_file_is_numbered_in_order() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert all(m.checksum for m in found)
    # Only the files that build or drop indexes CONCURRENTLY run outside a transaction.
    assert [m.version for m in found if not m.transactional] == [21]
