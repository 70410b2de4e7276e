"""Where ``conveyor dev`` and the demo keep the embedded server's data by default."""

from __future__ import annotations

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
