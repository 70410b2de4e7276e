"""Helpers for end-to-end tests of the ``conveyor`` command: run it, read its output lines as
they come, and tell whether an embedded server still runs."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def no_database_env() -> dict[str, str]:
    """The environment without a configured database, as on a machine with nothing set up."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("CONVEYOR_DATABASE_URL", "DATABASE_URL")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def conveyor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        cwd=ROOT,
        env=env or no_database_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


class Lines:
    """The output lines of a running process, read by a thread so that waiting can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, prefix: str, timeout: float = 60) -> str:
        """The first line starting with ``prefix`` (after stripping blanks)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                seen = "\n".join(self.seen)
                raise AssertionError(f"no line starting {prefix!r} in:\n{seen}") from None
            if line is None:
                raise AssertionError(f"output ended before {prefix!r}:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if line.strip().startswith(prefix):
                return line.strip()

    def rest(self) -> list[str]:
        """Every line up to the end of the output (call once the process ended)."""
        self._thread.join(timeout=30)
        while (line := self._queue.get_nowait()) is not None:
            self.seen.append(line)
        return self.seen


def server_running(data_dir: Path) -> bool:
    """Whether a postmaster still runs on ``data_dir`` (its pid file exists while it runs)."""
    return (data_dir / "postmaster.pid").exists()
