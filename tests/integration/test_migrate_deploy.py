"""Migrations during a deploy: a migration never queues behind a long transaction while it
blocks the workers (lock_timeout, retried), and workers of an older release keep running on a
schema whose newer migrations are all non-breaking."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

import conveyor._store.migrate as migrate_module
import conveyor._store.migrations as migrations_module
from conveyor import Conveyor
from conveyor._store.migrate import Migrator
from conveyor._store.migrations import Migration, header_flags, migrations
from conveyor._store.queries import queries
from conveyor.errors import MigrationError, SchemaTooNew
from tests.integration.previous import release_before

SHIPPED = migrations()


def extra(monkeypatch: pytest.MonkeyPatch, *files: str) -> list[Migration]:
    """Ship ``files`` as the next migrations of this release (for the test's duration)."""
    added = [Migration(len(SHIPPED) + i, f"extra_{i}", text) for i, text in enumerate(files, 1)]
    everything = (*SHIPPED, *added)
    monkeypatch.setattr(migrations_module, "migrations", lambda: everything)
    monkeypatch.setattr(migrate_module, "migrations", lambda: everything)
    return added


def run(dsn: str, statement: sql.Composable) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement)
        return cur.fetchall() if cur.description is not None else []


@pytest.fixture
def migrated(conveyor_dsn: str, scratch_schema: str) -> Iterator[Conveyor]:
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        app.migrate()
        yield app


class LongTransaction:
    """A transaction that reads the job table and stays open until ended."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.conn = psycopg.connect(dsn)
        self.conn.execute(sql.SQL("SELECT count(*) FROM {}.job").format(sql.Identifier(schema)))

    def end(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


def test_a_migration_gives_up_its_lock_wait_instead_of_blocking_workers(
    migrated: Conveyor, conveyor_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = migrated.schema
    extra(monkeypatch, "-- conveyor: non-breaking\nALTER TABLE {schema}.job ADD COLUMN probe int;")
    migrator = Migrator(conveyor_dsn, schema, lock_timeout=0.3, lock_attempts=3, lock_backoff=0.1)
    holder = LongTransaction(conveyor_dsn, schema)
    # Without a lock timeout the migration would wait for the holder forever, and every send
    # behind it too: end the holder after a while so such a failure cannot hang the suite.
    safety = threading.Timer(6, holder.end)
    safety.start()
    outcome: list[object] = []

    def migrate() -> None:
        try:
            outcome.append(migrator.apply())
        except MigrationError as exc:
            outcome.append(exc)

    try:
        thread = threading.Thread(target=migrate)
        thread.start()
        slowest = 0.0
        while thread.is_alive():
            begin = time.monotonic()
            migrated.send("probe", {})  # a worker-like write on the job table
            slowest = max(slowest, time.monotonic() - begin)
        thread.join()
    finally:
        safety.cancel()
    assert slowest < 1.0  # about lock_timeout, never the length of the long transaction
    assert len(outcome) == 1 and isinstance(outcome[0], MigrationError)
    assert "could not take its table locks" in str(outcome[0])
    assert not holder.conn.closed  # the migration gave up while the holder was still there
    holder.end()
    assert [m.name for m in migrator.apply()] == ["extra_1"]


def test_a_migration_retries_until_the_long_transaction_ends(
    migrated: Conveyor, conveyor_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = migrated.schema
    extra(monkeypatch, "-- conveyor: non-breaking\nALTER TABLE {schema}.job ADD COLUMN probe int;")
    migrator = Migrator(conveyor_dsn, schema, lock_timeout=0.2, lock_attempts=10, lock_backoff=0.1)
    holder = LongTransaction(conveyor_dsn, schema)
    threading.Timer(0.8, holder.end).start()
    assert [m.name for m in migrator.apply()] == ["extra_1"]
    assert holder.conn.closed


def test_old_workers_run_on_a_schema_whose_newer_migrations_are_not_breaking(
    migrated: Conveyor, conveyor_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = migrated.schema
    # A newer release ships two migrations and applies them; this release knows neither.
    with monkeypatch.context() as newer:
        extra(
            newer,
            "-- conveyor: non-breaking\nCREATE TABLE {schema}.added (x int);",
            "-- conveyor: non-breaking\nALTER TABLE {schema}.added ADD COLUMN y int;",
        )
        n = len(SHIPPED)
        assert migrated.migrate() == [f"{n + 1:04d}_extra_1", f"{n + 2:04d}_extra_2"]
    status = migrated.migration_status()
    assert status.unknown == (len(SHIPPED) + 1, len(SHIPPED) + 2)
    assert status.runnable and not status.current
    migrated.send("q", {})

    @migrated.job("q")
    def handler(job: object) -> None:
        return None

    assert migrated.drain() == 1  # the worker starts and runs

    # One of them breaking: the old worker refuses to start.
    run(
        conveyor_dsn,
        sql.SQL("UPDATE {}.migration SET breaking = true WHERE version = {}").format(
            sql.Identifier(schema), sql.Literal(len(SHIPPED) + 2)
        ),
    )
    assert not migrated.migration_status().runnable
    with pytest.raises(SchemaTooNew, match="breaking migrations"):
        migrated.drain()


def test_the_breaking_flag_is_recorded_from_the_header(
    migrated: Conveyor, conveyor_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = migrated.schema
    extra(
        monkeypatch,
        "-- conveyor: breaking\nCREATE TABLE {schema}.a (x int);",
        "-- conveyor: non-breaking\nCREATE TABLE {schema}.b (x int);",
        "-- no header: counts as breaking\nCREATE TABLE {schema}.c (x int);",
    )
    migrated.migrate()
    rows = run(
        conveyor_dsn,
        sql.SQL("SELECT version, breaking FROM {}.migration WHERE version > {}").format(
            sql.Identifier(schema), sql.Literal(len(SHIPPED))
        ),
    )
    n = len(SHIPPED)
    assert sorted(rows) == [(n + 1, True), (n + 2, False), (n + 3, True)]
    assert not next(m for m in SHIPPED if m.name == "hardening").breaking
    assert header_flags("-- conveyor: no-transaction, non-breaking\nSELECT 1") == {
        "no-transaction",
        "non-breaking",
    }
    with pytest.raises(RuntimeError, match="unknown migration flags"):
        header_flags("-- conveyor: breakin\nSELECT 1")


def test_a_version_table_without_the_breaking_column_is_read_and_upgraded(
    migrated: Conveyor, conveyor_dsn: str
) -> None:
    """As a release before the flag left it: read as breaking, the column added on migrate."""
    table = sql.SQL("{}.migration").format(sql.Identifier(migrated.schema))
    run(conveyor_dsn, sql.SQL("ALTER TABLE {} DROP COLUMN breaking").format(table))
    assert migrated.migration_status().current
    assert migrated.migrate() == []
    rows = run(conveyor_dsn, sql.SQL("SELECT DISTINCT breaking FROM {}").format(table))
    assert rows == [(True,)]


def test_jobs_are_read_through_a_column_a_later_release_adds(
    migrated: Conveyor, conveyor_dsn: str
) -> None:
    """A column the next release adds to the job tables does not break this release's reads
    during a rolling deploy."""
    job_id = migrated.send("later.q", {"n": 1})
    schema = sql.Identifier(migrated.schema)
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        for table in ("job", "job_archive", "job_dead"):
            conn.execute(
                sql.SQL("ALTER TABLE {}.{} ADD COLUMN added_later int DEFAULT 7").format(
                    schema, sql.Identifier(table)
                )
            )
        # job_history is a view of the other two: the release widens it by the new column.
        shown = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'job_history' ORDER BY ordinal_position",
            (migrated.schema,),
        ).fetchall()
        columns = sql.SQL(", ").join(sql.Identifier(r[0]) for r in [*shown, ("added_later",)])
        conn.execute(
            sql.SQL(
                "CREATE OR REPLACE VIEW {s}.job_history AS SELECT {c} FROM {s}.job_archive "
                "UNION ALL SELECT {c} FROM {s}.job_dead"
            ).format(s=schema, c=columns)
        )
    assert migrated.get_job(job_id).data == {"n": 1}
    assert [j.id for j in migrated.list_jobs(queue="later.q")] == [job_id]


# -- no-transaction migrations: statement by statement, CONCURRENTLY -------------------------------

NO_TRANSACTION = """-- conveyor: no-transaction, non-breaking
-- A comment; with a semicolon.
DROP INDEX CONCURRENTLY IF EXISTS {schema}.probe_idx;
CREATE INDEX CONCURRENTLY probe_idx ON {schema}.job (created_at);
CREATE OR REPLACE FUNCTION {schema}.probe() RETURNS text LANGUAGE plpgsql AS $fn$
BEGIN
    RETURN 'a;b';
END
$fn$;
"""


def index_valid(dsn: str, schema: str, name: str) -> bool | None:
    """Whether the index exists and is valid (None: it does not exist)."""
    rows = run(
        dsn,
        sql.SQL(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = {} AND c.relname = {}"
        ).format(sql.Literal(schema), sql.Literal(name)),
    )
    return bool(rows[0][0]) if rows else None


def test_a_no_transaction_migration_runs_statement_by_statement(
    migrated: Conveyor, conveyor_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = migrated.schema
    extra(monkeypatch, NO_TRANSACTION)
    # Sent whole, the file would run as one implicit transaction, where PostgreSQL refuses
    # CREATE INDEX CONCURRENTLY.
    assert migrated.migrate() == [f"{len(SHIPPED) + 1:04d}_extra_1"]
    assert index_valid(conveyor_dsn, schema, "probe_idx") is True
    probe = sql.SQL("SELECT {}.probe()").format(sql.Identifier(schema))
    assert run(conveyor_dsn, probe) == [("a;b",)]


def test_a_no_transaction_migration_runs_again_after_failing_part_way(
    migrated: Conveyor, conveyor_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = migrated.schema
    (added,) = extra(monkeypatch, NO_TRANSACTION)
    # The first two statements ran, then the migrator died: the file is not recorded.
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        for statement in added.statements(schema)[:2]:
            conn.execute(statement)  # type: ignore[arg-type]
    assert migrated.migrate() == [f"{len(SHIPPED) + 1:04d}_extra_1"]
    assert index_valid(conveyor_dsn, schema, "probe_idx") is True


def test_an_index_built_concurrently_waits_for_long_transactions_without_a_lock_timeout(
    migrated: Conveyor, conveyor_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CREATE INDEX CONCURRENTLY waits for every older transaction of the database, blocking no
    worker meanwhile: the lock timeout that guards workers from a queued lock does not apply."""
    schema = migrated.schema
    extra(monkeypatch, NO_TRANSACTION)
    migrator = Migrator(conveyor_dsn, schema, lock_timeout=0.1, lock_attempts=1)
    holder = LongTransaction(conveyor_dsn, schema)
    # A writer of the job table, as a handler's job.transaction() is.
    holder.conn.execute(sql.SQL("DELETE FROM {}.job WHERE false").format(sql.Identifier(schema)))
    threading.Timer(0.6, holder.end).start()
    begin = time.monotonic()
    assert [m.name for m in migrator.apply()] == ["extra_1"]
    assert time.monotonic() - begin >= 0.5  # it waited for the holder, and did not give up
    assert index_valid(conveyor_dsn, schema, "probe_idx") is True


def test_the_fetch_split_upgrades_a_filled_schema_of_the_previous_release(
    conveyor_dsn: str, scratch_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0021 on a schema the previous release migrated and filled: a group running a job, queued
    grouped and ungrouped jobs. Its indexes replace the old ones, and the claims go on."""
    with (
        release_before("fetch_split", monkeypatch) as split,
        Conveyor(conveyor_dsn, schema=scratch_schema) as old,
    ):
        old.migrate()
        old.send_batch(
            [("q", {"n": n}, {"group_key": "g"}) for n in range(3)]
            + [("q", {"n": n}) for n in range(3, 5)]
        )
        fetch = queries(scratch_schema)["job_fetch"].sql
        with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
            got = conn.execute(
                fetch, {"queues": ["q"], "worker": uuid.uuid4(), "limit": 3, "now": None}
            ).fetchall()
        assert sorted(r["data"]["n"] for r in got) == [0, 3, 4]
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        assert f"{split.version:04d}_fetch_split" in app.migrate()
        for name in ("job_fetch_free_idx", "job_fetch_group_idx", "job_group_idx"):
            assert index_valid(conveyor_dsn, scratch_schema, name) is True
        for name in ("job_fetch_idx", "job_group_key_idx", "job_active_idx"):
            assert index_valid(conveyor_dsn, scratch_schema, name) is None
        app.send_batch([("q", {"n": 5}), ("q", {"n": 6}, {"group_key": "h"})])
        with psycopg.connect(conveyor_dsn, row_factory=dict_row) as conn:
            got = conn.execute(
                fetch, {"queues": ["q"], "worker": uuid.uuid4(), "limit": 10, "now": None}
            ).fetchall()
        # Group g still runs job 0: its next job waits; the new group and job are claimed.
        assert sorted(r["data"]["n"] for r in got) == [5, 6]
