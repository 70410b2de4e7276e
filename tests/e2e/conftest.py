"""Fixtures of the end-to-end tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def embedded_dir() -> Iterator[Path]:
    """A data directory for an embedded server, outside pytest's temporary root: as root the
    server runs as another user, who must traverse every parent directory, and each pytest
    session that starts makes ``/tmp/pytest-of-<user>`` private again."""
    parent = Path(tempfile.mkdtemp(prefix="conveyor-e2e-"))
    yield parent / "pg"
    shutil.rmtree(parent, ignore_errors=True)
