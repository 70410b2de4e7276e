"""The lazily built stores and migrators of one application, sync and async side by side.

A sync user never opens the async pool and the other way round; each is built on first use.
With a read DSN (a streaming standby), inspection reads get pools of their own on it.
"""

from __future__ import annotations

import threading
from typing import Any

from conveyor._store.connections import check_dsn
from conveyor._store.migrate import Migrator
from conveyor._store.migrate_async import AsyncMigrator
from conveyor._store.store import Store
from conveyor._store.store_async import AsyncStore
from conveyor.config import Settings, resolve_dsn, resolve_read_dsn


class Stores:
    """Builds and owns the connection pools of one application."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._async: AsyncStore | None = None
        self._sync: Store | None = None
        self._read_async: AsyncStore | None = None
        self._read_sync: Store | None = None

    @property
    def dsn(self) -> str:
        """The DSN, resolved from the environment when the app was given none."""
        return check_dsn(resolve_dsn(self._settings.dsn))

    @property
    def listen_dsn(self) -> str | None:
        """Where to LISTEN: the listen_dsn, else the dsn, except through PgBouncer (None: poll)."""
        if self._settings.listen_dsn:
            return check_dsn(self._settings.listen_dsn)
        return None if self._settings.pgbouncer else self.dsn

    @property
    def read_dsn(self) -> str | None:
        """Where inspection reads go (a standby), or None: the primary."""
        found = resolve_read_dsn(self._settings.read_dsn)
        return None if found is None else check_dsn(found)

    def reader_async(self, connection: object = None) -> AsyncStore:
        """The async store for an inspection read: on the standby when there is one, unless
        the read joins the caller's ``connection``."""
        dsn = self.read_dsn
        if dsn is None or connection is not None:
            return self.store_async()
        with self._lock:
            if self._read_async is None:
                self._read_async = AsyncStore(dsn, self._settings.schema, **self._read_options())
            return self._read_async

    def reader(self, connection: object = None) -> Store:
        """The sync store for an inspection read; see :meth:`reader_async`."""
        dsn = self.read_dsn
        if dsn is None or connection is not None:
            return self.store()
        with self._lock:
            if self._read_sync is None:
                self._read_sync = Store(dsn, self._settings.schema, **self._read_options())
            return self._read_sync

    def _read_options(self) -> dict[str, Any]:
        # No LISTEN on a standby (it cannot): what waits for a notification uses the primary.
        return {
            "min_size": self._settings.pool_min_size,
            "max_size": self._settings.pool_max_size,
            "application_name": f"conveyor reads {self._settings.schema}",
            "listen_dsn": None,
            "prepare": not self._settings.pgbouncer,
        }

    def store_async(self) -> AsyncStore:
        """The async store (its pool opens on first query)."""
        with self._lock:
            if self._async is None:
                self._async = AsyncStore(
                    self.dsn,
                    self._settings.schema,
                    min_size=self._settings.pool_min_size,
                    max_size=self._settings.pool_max_size,
                    listen_dsn=self.listen_dsn,
                    prepare=not self._settings.pgbouncer,
                )
            return self._async

    def store(self) -> Store:
        """The sync store (its pool opens on first query)."""
        with self._lock:
            if self._sync is None:
                self._sync = Store(
                    self.dsn,
                    self._settings.schema,
                    min_size=self._settings.pool_min_size,
                    max_size=self._settings.pool_max_size,
                    listen_dsn=self.listen_dsn,
                    prepare=not self._settings.pgbouncer,
                )
            return self._sync

    def migrator_async(self) -> AsyncMigrator:
        """Migrations over a dedicated async connection."""
        return AsyncMigrator(self.dsn, self._settings.schema)

    def migrator(self) -> Migrator:
        """Migrations over a dedicated sync connection."""
        return Migrator(self.dsn, self._settings.schema)

    async def close_async(self) -> None:
        """Close the async pools, if any was opened."""
        for store in (self._async, self._read_async):
            if store is not None:
                await store.close()

    async def discard_async(self) -> None:
        """Close the async pool and forget it, so the next async call opens a new one: for an
        event loop that is about to end (the sync ``run_worker`` runs one), whose connections
        would otherwise stay open with nothing left to use them."""
        with self._lock:
            stores = (self._async, self._read_async)
            self._async = self._read_async = None
        for store in stores:
            if store is not None:
                await store.close()

    def close(self) -> None:
        """Close the sync pools, if any was opened."""
        for store in (self._sync, self._read_sync):
            if store is not None:
                store.close()
