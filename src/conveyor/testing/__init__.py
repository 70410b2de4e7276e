"""Testing helpers: a database for tests, and migrated schemas isolated per test.

The pytest plugin in :mod:`conveyor.testing.plugin` builds its fixtures from these; Conveyor's own
suite uses the same fixtures its users get.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psycopg

from conveyor._store.migrate import Migrator
from conveyor.embedded import embedded_postgres

LOCAL_TEST_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@contextlib.contextmanager
def test_database() -> Iterator[str]:
    """The DSN of a database for tests, started if need be.

    ``CONVEYOR_TEST_DSN`` if set; else the local server on 127.0.0.1:5432 (database ``test``) if it
    answers; else an embedded PostgreSQL, shared by every process of the test run (pytest-xdist
    workers included). ``CONVEYOR_TEST_EMBEDDED=1`` skips straight to the embedded server.
    """
    configured = os.environ.get("CONVEYOR_TEST_DSN")
    if configured:
        yield configured
    elif os.environ.get("CONVEYOR_TEST_EMBEDDED") != "1" and _answers(LOCAL_TEST_DSN):
        yield LOCAL_TEST_DSN
    else:
        with embedded_postgres() as dsn:
            yield dsn


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
