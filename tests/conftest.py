"""Shared helpers of Conveyor's own suite; the fixtures come from the conveyor.testing plugin."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest


@pytest.fixture
def scratch_schema(conveyor_dsn: str) -> Iterator[str]:
    """A schema name nobody uses yet, dropped after the test (for migration tests)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"conveyor_scratch_{worker}_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _leaked_threads(before: set[int | None]) -> list[str]:
    return [
        t.name
        for t in threading.enumerate()
        if t.ident not in before and t.name.startswith("conveyor") and t.is_alive()
    ]


def _connections(dsn: str, schema: str) -> dict[int, str]:
    """Conveyor's open connections to the schema, by backend pid."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, application_name FROM pg_stat_activity "
            "WHERE application_name LIKE 'conveyor%%' AND application_name LIKE %s "
            "AND pid <> pg_backend_pid()",
            (f"% {schema}",),
        ).fetchall()
    return {r[0]: r[1] for r in rows}


@pytest.fixture(autouse=True)
def leak_guard(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves Conveyor's threads or database connections behind (a worker
    not stopped, an app not closed). Mark a test ``allow_leaks`` when leaving one is its point."""
    schema = dsn = None
    if "conveyor_schema" in request.fixturenames:
        schema = request.getfixturevalue("conveyor_schema")
        dsn = request.getfixturevalue("conveyor_dsn")
    before = {t.ident for t in threading.enumerate()}
    open_before = _connections(dsn, schema) if dsn and schema else {}
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return
    deadline = time.monotonic() + 5  # a pool's threads and connections end a moment after close
    while True:
        threads = _leaked_threads(before)
        connections = [
            name
            for pid, name in (_connections(dsn, schema) if dsn and schema else {}).items()
            if pid not in open_before
        ]
        if not threads and not connections:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"left behind: threads {threads}, connections {connections}")
        time.sleep(0.05)
