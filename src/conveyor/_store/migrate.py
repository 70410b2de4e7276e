# Generated from src/conveyor/_store/migrate_async.py
# by tools/async_to_sync.py: edit that file, not this one.
"""Apply and check migrations (async; ``migrate.py`` is generated from this file).

Any number of processes may migrate at once: each file is applied in its own transaction under a
transaction-level advisory lock keyed by the schema name, and the applied versions are re-read
under that lock, so exactly one process applies each file and the others find it done.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg import Connection, Error

from conveyor._store.errors import translated
from conveyor._store.migrations import Migration, MigrationStatus, migrations, status
from conveyor._store.queries import queries
from conveyor.errors import SchemaOutOfDate, SchemaTooNew


class Migrator:
    """Migrations of one schema, each run over a dedicated connection."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self._queries = queries(schema)

    @contextmanager
    def _connection(self) -> Iterator[Connection[Any]]:
        """A dedicated autocommit connection; database errors come out as Conveyor's."""
        try:
            with Connection.connect(self.dsn, autocommit=True) as conn:
                yield conn
        except Error as exc:
            ours = translated(exc, self.schema)
            if ours is None:
                raise
            raise ours from exc

    def _run(self, conn: Connection[Any], query: str, **params: Any) -> list[Any]:
        cur = conn.execute(self._queries[query].sql, params or None)
        return cur.fetchall() if cur.description is not None else []

    def _applied(self, conn: Connection[Any]) -> dict[int, str]:
        if not (self._run(conn, "migration_table_exists"))[0][0]:
            return {}
        return dict(self._run(conn, "migration_applied"))

    def status(self) -> MigrationStatus:
        """Applied, pending and unknown (newer) migrations of the schema."""
        with self._connection() as conn:
            return status(self._applied(conn))

    def apply(self) -> list[Migration]:
        """Apply every pending migration; return those this call applied."""
        done: list[Migration] = []
        with self._connection() as conn:
            for migration in migrations():
                if migration.transactional:
                    with conn.transaction():
                        self._run(conn, "migration_xact_lock")
                        applied = self._apply_locked(conn, migration)
                else:
                    self._run(conn, "migration_session_lock")
                    try:
                        applied = self._apply_locked(conn, migration)
                    finally:
                        self._run(conn, "migration_session_unlock")
                if applied:
                    done.append(migration)
        return done

    def _apply_locked(self, conn: Connection[Any], migration: Migration) -> bool:
        self._run(conn, "migration_bootstrap")
        if migration.version in status(self._applied(conn)).applied:
            return False
        conn.execute(migration.sql(self.schema))
        self._run(
            conn,
            "migration_record",
            version=migration.version,
            name=migration.name,
            checksum=migration.checksum,
        )
        return True

    def ensure_current(self) -> MigrationStatus:
        """Raise unless the schema is exactly at this release's version."""
        found = self.status()
        if found.unknown:
            raise SchemaTooNew(
                f"schema {self.schema!r} has migrations {list(found.unknown)} this release does "
                "not know: upgrade Conveyor"
            )
        if found.pending:
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in found.pending)
            raise SchemaOutOfDate(
                f"schema {self.schema!r} is missing migrations {names}: run `conveyor migrate`"
            )
        return found

    def drift(self, versions: tuple[int, ...]) -> tuple[list[str], list[str]]:
        """Compare the live schema with what migrations ``versions`` build: the catalog lines
        (see ``schema_describe``) it lacks, and those it has that they do not build.

        The reference is built in a scratch schema inside a transaction that is rolled back,
        so nothing is left behind.
        """
        scratch = f"{self.schema[:40]}_doctor_{secrets.token_hex(4)}"
        named = queries(scratch)
        with self._connection() as conn:
            live = self._describe(conn, self.schema)
            with conn.transaction(force_rollback=True):
                conn.execute(named["migration_bootstrap"].sql)
                for migration in migrations():
                    if migration.version in versions:
                        conn.execute(migration.sql(scratch))
                wanted = self._describe(conn, scratch)
        return sorted(set(wanted) - set(live)), sorted(set(live) - set(wanted))

    def _describe(self, conn: Connection[Any], schema: str) -> list[str]:
        return [row[0] for row in self._run(conn, "schema_describe", s=schema)]

    def truncate(self) -> None:
        """Empty every table of the schema, keeping its migrations (for test isolation)."""
        with self._connection() as conn:
            self._run(conn, "schema_truncate")

    def drop(self) -> None:
        """Drop the schema with everything in it."""
        with self._connection() as conn:
            self._run(conn, "schema_drop")
