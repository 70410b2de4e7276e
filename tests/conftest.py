"""Shared helpers of Conveyor's own suite; the fixtures come from the conveyor.testing plugin."""

from __future__ import annotations

import os
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
