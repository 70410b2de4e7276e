"""Pytest fixtures for applications built on Conveyor (registered as the ``conveyor`` plugin).

- ``conveyor_dsn``: the test database: ``CONVEYOR_TEST_DSN``, else 127.0.0.1:5432/test, else an
  embedded PostgreSQL.
- ``conveyor_schema``: a migrated schema of this xdist worker, emptied before each test.
- ``app``: a :class:`~conveyor.Conveyor` on that schema for sync tests.
- ``app_async``: the same for ``async def`` tests (its async pool is closed in the test's loop);
  needs pytest-asyncio, which the ``dev`` extra installs.
- ``frozen_clock``: a :class:`~conveyor.FrozenClock` at the current time, moved only by the test.
- ``frozen_app`` / ``frozen_app_async``: like ``app`` / ``app_async``, with ``frozen_clock`` as
  the app's "now", so delays, retries and schedules fall due when the test advances the clock.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from conveyor.app import Conveyor
from conveyor.clock import FrozenClock
from conveyor.testing import IsolatedSchema, test_database


@pytest.fixture(scope="session")
def conveyor_dsn() -> Iterator[str]:
    """The DSN of the test database (see :func:`conveyor.testing.test_database`)."""
    with test_database() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def _conveyor_isolated_schema(conveyor_dsn: str) -> Iterator[IsolatedSchema]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    # The pid keeps two test sessions on one database (two CI jobs, two checkouts) apart.
    schema = IsolatedSchema(conveyor_dsn, f"conveyor_test_{worker}_{os.getpid()}")
    yield schema
    schema.drop()


@pytest.fixture
def conveyor_schema(_conveyor_isolated_schema: IsolatedSchema) -> str:
    """A migrated, empty schema for this test."""
    return _conveyor_isolated_schema.fresh()


@pytest.fixture
def app(conveyor_dsn: str, conveyor_schema: str) -> Iterator[Conveyor]:
    """A Conveyor app on an isolated, migrated schema."""
    with Conveyor(conveyor_dsn, schema=conveyor_schema) as conveyor:
        yield conveyor


@pytest_asyncio.fixture
async def app_async(conveyor_dsn: str, conveyor_schema: str) -> AsyncIterator[Conveyor]:
    """A Conveyor app on an isolated, migrated schema, for async tests."""
    async with Conveyor(conveyor_dsn, schema=conveyor_schema) as conveyor:
        yield conveyor


@pytest.fixture
def frozen_clock() -> FrozenClock:
    """A clock at the current time that moves only by ``advance`` and ``set``."""
    return FrozenClock()


@pytest.fixture
def frozen_app(
    conveyor_dsn: str, conveyor_schema: str, frozen_clock: FrozenClock
) -> Iterator[Conveyor]:
    """A Conveyor app on an isolated, migrated schema whose "now" is ``frozen_clock``."""
    with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=frozen_clock) as conveyor:
        yield conveyor


@pytest_asyncio.fixture
async def frozen_app_async(
    conveyor_dsn: str, conveyor_schema: str, frozen_clock: FrozenClock
) -> AsyncIterator[Conveyor]:
    """``frozen_app`` for async tests."""
    async with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=frozen_clock) as conveyor:
        yield conveyor
