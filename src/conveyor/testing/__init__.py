"""Testing helpers: a database for tests, and migrated schemas isolated per test.

The pytest plugin in :mod:`conveyor.testing.plugin` builds its fixtures from these; Conveyor's own
suite uses the same fixtures its users get.
"""

from __future__ import annotations

import os

from conveyor._store.migrate import Migrator

DEFAULT_TEST_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def test_dsn() -> str:
    """``CONVEYOR_TEST_DSN``, else the local server on 127.0.0.1:5432 (database ``test``)."""
    return os.environ.get("CONVEYOR_TEST_DSN") or DEFAULT_TEST_DSN


class IsolatedSchema:
    """A migrated schema reserved for one pytest-xdist worker, emptied before each test.

    Tests of one worker run one after another, so one schema per worker isolates them; workers
    never share a schema, a NOTIFY channel or a lock key, since all are scoped by schema name.
    """

    def __init__(self, dsn: str, name: str) -> None:
        self.dsn = dsn
        self.name = name
        self._migrator = Migrator(dsn, name)
        self._ready = False

    def fresh(self) -> str:
        """Return the schema name, migrated and with every table empty."""
        if not self._ready:
            self._migrator.drop()
            self._migrator.apply()
            self._ready = True
        else:
            self._migrator.truncate()
        return self.name

    def drop(self) -> None:
        """Drop the schema."""
        self._migrator.drop()
        self._ready = False
