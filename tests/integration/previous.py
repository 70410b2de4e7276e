"""A schema as the release before a migration left it, for tests of that migration's upgrade."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import conveyor._store.migrate as migrate_module
import conveyor._store.migrations as migrations_module
from conveyor._store.migrations import Migration, migrations


@contextmanager
def release_before(name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Migration]:
    """While inside, migrating applies only the migrations before the one named ``name``
    (which it yields): the schema the previous release would leave."""
    shipped = migrations()
    upgrade = next(m for m in shipped if m.name == name)
    before = tuple(m for m in shipped if m.version < upgrade.version)
    with monkeypatch.context() as previous:
        previous.setattr(migrations_module, "migrations", lambda: before)
        previous.setattr(migrate_module, "migrations", lambda: before)
        yield upgrade
