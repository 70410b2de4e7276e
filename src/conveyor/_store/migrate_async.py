"""Apply and check migrations (async; ``migrate.py`` is generated from this file).

Any number of processes may migrate at once: each file is applied in its own transaction under a
transaction-level advisory lock keyed by the schema name, and the applied versions are re-read
under that lock, so exactly one process applies each file and the others find it done.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection, Error

from conveyor._store.errors import translated
from conveyor._store.migrations import Migration, MigrationStatus, migrations, status
from conveyor._store.queries import queries
from conveyor.errors import SchemaOutOfDate, SchemaTooNew


class AsyncMigrator:
    """Migrations of one schema, each run over a dedicated connection."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self._queries = queries(schema)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A dedicated autocommit connection; database errors come out as Conveyor's."""
        try:
            async with await AsyncConnection.connect(self.dsn, autocommit=True) as conn:
                yield conn
        except Error as exc:
            ours = translated(exc, self.schema)
            if ours is None:
                raise
            raise ours from exc

    async def _run(self, conn: AsyncConnection[Any], query: str, **params: Any) -> list[Any]:
        cur = await conn.execute(self._queries[query].sql, params or None)
        return await cur.fetchall() if cur.description is not None else []

    async def _applied(self, conn: AsyncConnection[Any]) -> dict[int, str]:
        if not (await self._run(conn, "migration_table_exists"))[0][0]:
            return {}
        return dict(await self._run(conn, "migration_applied"))

    async def status(self) -> MigrationStatus:
        """Applied, pending and unknown (newer) migrations of the schema."""
        async with self._connection() as conn:
            return status(await self._applied(conn))

    async def apply(self) -> list[Migration]:
        """Apply every pending migration; return those this call applied."""
        done: list[Migration] = []
        async with self._connection() as conn:
            for migration in migrations():
                if migration.transactional:
                    async with conn.transaction():
                        await self._run(conn, "migration_xact_lock")
                        applied = await self._apply_locked(conn, migration)
                else:
                    await self._run(conn, "migration_session_lock")
                    try:
                        applied = await self._apply_locked(conn, migration)
                    finally:
                        await self._run(conn, "migration_session_unlock")
                if applied:
                    done.append(migration)
        return done

    async def _apply_locked(self, conn: AsyncConnection[Any], migration: Migration) -> bool:
        await self._run(conn, "migration_bootstrap")
        if migration.version in status(await self._applied(conn)).applied:
            return False
        await conn.execute(migration.sql(self.schema))
        await self._run(
            conn,
            "migration_record",
            version=migration.version,
            name=migration.name,
            checksum=migration.checksum,
        )
        return True

    async def ensure_current(self) -> MigrationStatus:
        """Raise unless the schema is exactly at this release's version."""
        found = await self.status()
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

    async def drift(self, versions: tuple[int, ...]) -> tuple[list[str], list[str]]:
        """Compare the live schema with what migrations ``versions`` build: the catalog lines
        (see ``schema_describe``) it lacks, and those it has that they do not build.

        The reference is built in a scratch schema inside a transaction that is rolled back,
        so nothing is left behind.
        """
        scratch = f"{self.schema[:40]}_doctor_{secrets.token_hex(4)}"
        named = queries(scratch)
        async with self._connection() as conn:
            live = await self._describe(conn, self.schema)
            async with conn.transaction(force_rollback=True):
                await conn.execute(named["migration_bootstrap"].sql)
                for migration in migrations():
                    if migration.version in versions:
                        await conn.execute(migration.sql(scratch))
                wanted = await self._describe(conn, scratch)
        return sorted(set(wanted) - set(live)), sorted(set(live) - set(wanted))

    async def _describe(self, conn: AsyncConnection[Any], schema: str) -> list[str]:
        return [row[0] for row in await self._run(conn, "schema_describe", s=schema)]

    async def truncate(self) -> None:
        """Empty every table of the schema, keeping its migrations (for test isolation)."""
        async with self._connection() as conn:
            await self._run(conn, "schema_truncate")

    async def drop(self) -> None:
        """Drop the schema with everything in it."""
        async with self._connection() as conn:
            await self._run(conn, "schema_drop")
