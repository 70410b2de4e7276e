# Generated from src/conveyor/_store/migrate_async.py
# by tools/async_to_sync.py: edit that file, not this one.
"""Apply and check migrations (async; ``migrate.py`` is generated from this file).

Any number of processes may migrate at once: each file is applied in its own transaction under a
transaction-level advisory lock keyed by the schema name, and the applied versions are re-read
under that lock, so exactly one process applies each file and the others find it done.

A migration waits at most ``lock_timeout`` seconds for each table lock. A migration queued for
an ACCESS EXCLUSIVE lock behind a long transaction would make every worker's statement on that
table queue behind it in turn, so it gives up instead, rolls back, and tries again after a
growing pause; after ``lock_attempts`` tries it raises :class:`~conveyor.errors.MigrationError`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from secrets import token_hex
from typing import Any

from psycopg import Connection, Error
from psycopg.errors import LockNotAvailable

from conveyor._store.errors import translated
from conveyor._store.migrations import Applied, Migration, MigrationStatus, migrations, status
from conveyor._store.queries import queries
from conveyor.errors import MigrationError, SchemaOutOfDate, SchemaTooNew

LOCK_TIMEOUT = 5.0
LOCK_ATTEMPTS = 5
# The pause after the n-th failed try is LOCK_BACKOFF * 2**(n-1) seconds.
LOCK_BACKOFF = 1.0


# The catalog lines each set of migration files builds (see ``Migrator.drift``), by server
# version and the files' versions and checksums.
_REFERENCES: dict[tuple[int, tuple[tuple[int, str], ...]], list[str]] = {}


class Migrator:
    """Migrations of one schema, each run over a dedicated connection."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        lock_timeout: float = LOCK_TIMEOUT,
        lock_attempts: int = LOCK_ATTEMPTS,
        lock_backoff: float = LOCK_BACKOFF,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.lock_timeout = lock_timeout
        self.lock_attempts = lock_attempts
        self.lock_backoff = lock_backoff
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

    def _applied(self, conn: Connection[Any]) -> dict[int, Applied]:
        if not (self._run(conn, "migration_table_exists"))[0][0]:
            return {}
        rows = self._run(conn, "migration_applied")
        return {version: Applied(checksum, breaking) for version, checksum, breaking in rows}

    def status(self) -> MigrationStatus:
        """Applied, pending and unknown (newer) migrations of the schema."""
        with self._connection() as conn:
            return status(self._applied(conn))

    def apply(self) -> list[Migration]:
        """Apply every pending migration; return those this call applied."""
        done: list[Migration] = []
        with self._connection() as conn:
            for migration in migrations():
                if self._apply_with_retries(conn, migration):
                    done.append(migration)
        return done

    def _apply_with_retries(self, conn: Connection[Any], migration: Migration) -> bool:
        for attempt in range(1, self.lock_attempts):
            try:
                return self._apply_one(conn, migration)
            except LockNotAvailable:
                time.sleep(self.lock_backoff * 2 ** (attempt - 1))
        try:
            return self._apply_one(conn, migration)
        except LockNotAvailable as exc:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name} could not take its table "
                f"locks within {self.lock_timeout:g}s, {self.lock_attempts} times: a long "
                "transaction holds them (see pg_stat_activity); migrate again once it ended"
            ) from exc

    def _apply_one(self, conn: Connection[Any], migration: Migration) -> bool:
        # The advisory lock is taken before the timeout is set: other migrators wait for it as
        # long as the one holding it needs.
        if migration.transactional:
            with conn.transaction():
                self._run(conn, "migration_xact_lock")
                self._run(conn, "migration_lock_timeout_local", ms=self._timeout_ms)
                return self._apply_locked(conn, migration)
        self._run(conn, "migration_session_lock")
        try:
            self._run(conn, "migration_lock_timeout", ms=self._timeout_ms)
            return self._apply_locked(conn, migration)
        finally:
            self._run(conn, "migration_lock_timeout_reset")
            self._run(conn, "migration_session_unlock")

    @property
    def _timeout_ms(self) -> str:
        return str(max(1, round(self.lock_timeout * 1000)))

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
            breaking=migration.breaking,
        )
        return True

    def ensure_current(self) -> MigrationStatus:
        """Raise unless this release's code can run on the schema: every shipped migration is
        applied, and those it does not know (a newer release applied them) are non-breaking."""
        found = self.status()
        if found.unknown_breaking:
            raise SchemaTooNew(
                f"schema {self.schema!r} has breaking migrations {list(found.unknown_breaking)} "
                "this release does not know: upgrade Conveyor"
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
        scratch = f"{self.schema[:40]}_doctor_{token_hex(4)}"
        named = queries(scratch)
        files = [m for m in migrations() if m.version in versions]
        with self._connection() as conn:
            live = self._describe(conn, self.schema)
            # Building the reference takes a second or more; the same files on the same server
            # build the same catalog, so a process builds it once.
            key = (conn.info.server_version, tuple((m.version, m.checksum) for m in files))
            wanted = _REFERENCES.get(key)
            if wanted is None:
                with conn.transaction(force_rollback=True):
                    conn.execute(named["migration_bootstrap"].sql)
                    for migration in files:
                        conn.execute(migration.sql(scratch))
                    wanted = _REFERENCES[key] = self._describe(conn, scratch)
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
