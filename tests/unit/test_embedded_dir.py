"""Where ``conveyor dev`` and the demo keep the embedded server's data by default."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from conveyor import embedded


def test_a_configured_directory_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_EMBEDDED_DIR", "~/pg-here")
    monkeypatch.setattr(embedded.os, "geteuid", lambda: 0)
    assert embedded.default_data_dir() == Path.home() / "pg-here"


def test_a_user_gets_a_directory_in_their_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONVEYOR_EMBEDDED_DIR", raising=False)
    monkeypatch.setattr(embedded.os, "geteuid", lambda: 1000)
    assert embedded.default_data_dir() == Path.home() / ".cache" / "conveyor" / "pg18"


def test_root_gets_one_outside_its_home(monkeypatch: pytest.MonkeyPatch) -> None:
    # The wheel runs the server as its own user and opens every parent directory to it.
    monkeypatch.delenv("CONVEYOR_EMBEDDED_DIR", raising=False)
    monkeypatch.setattr(embedded.os, "geteuid", lambda: 0)
    assert embedded.default_data_dir() == Path("/var/lib/conveyor/pg18")


class FakeLock:
    def __init__(self, path: Path) -> None:
        self.path = path


def test_the_shared_tmp_lock_becomes_one_per_user() -> None:
    # Whoever creates /tmp/.lockfile first owns it: every other user was locked out.
    class Server:
        lock_path = Path(tempfile.gettempdir()) / ".lockfile"
        _lock = FakeLock(lock_path)

    embedded._lock_per_user(Server)
    mine = Path(tempfile.gettempdir()) / f"conveyor-pgserver-{os.getuid()}.lock"
    assert (Server.lock_path, Server._lock.path) == (mine, mine)


def test_a_per_user_runtime_lock_is_kept() -> None:
    class Server:
        lock_path = Path("/run/user/1000/python_PostgresServer/.lockfile")
        _lock = FakeLock(lock_path)

    embedded._lock_per_user(Server)
    assert Server._lock.path == Path("/run/user/1000/python_PostgresServer/.lockfile")
