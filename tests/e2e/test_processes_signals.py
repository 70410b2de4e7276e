"""``conveyor worker --processes N`` and signals, with real processes: one signal is one graceful
shutdown however it is delivered, and no child outlives its supervisor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, JobState
from tests.e2e.test_processes import e2e, ledger, wait_until

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["e2e"]  # the fixture, imported to be used here


def start_supervisor(dsn: str, schema: str, *args: str) -> subprocess.Popen[str]:
    """``conveyor worker --processes 2`` in a session (and process group) of its own, as a shell
    starts a foreground command."""
    env = {**os.environ, "CONVEYOR_DATABASE_URL": dsn, "CONVEYOR_SCHEMA": schema}
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "worker", "tests.e2e.jobs:app",
         "--processes", "2", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.fixture
def children(e2e: Conveyor) -> Iterator[list[int]]:
    """The pids of the workers, for the test to fill; any left running are killed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def worker_pids(app: Conveyor, n: int) -> list[int]:
    wait_until(lambda: len(app.list_workers()) == n, 60, f"{n} workers registered")
    return [w.pid for w in app.list_workers()]


@pytest.mark.parametrize("delivery", ["process group", "every process"])
def test_one_signal_lets_the_running_job_finish(
    e2e: Conveyor, conveyor_dsn: str, children: list[int], delivery: str
) -> None:
    """Ctrl-C in a terminal signals the process group; systemd's default KillMode
    (control-group) signals every process itself. Either way, one graceful shutdown."""
    job_id = e2e.send("e2e.sleep", {"seconds": 2})
    proc = start_supervisor(conveyor_dsn, e2e.schema, "--shutdown-timeout", "60")
    try:
        children += worker_pids(e2e, 2)
        wait_until(lambda: len(ledger(conveyor_dsn, e2e.schema)) == 1, 30, "the job to start")
        if delivery == "process group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            for pid in (proc.pid, *children):
                os.kill(pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    job = e2e.get_job(job_id)
    # Completed by its first attempt: not handed back by a stop taken for a second signal.
    assert (job.state, job.attempt, job.result) == (JobState.COMPLETED, 1, "slept"), out[-3000:]


def test_children_exit_when_their_supervisor_is_killed(
    e2e: Conveyor, conveyor_dsn: str, children: list[int]
) -> None:
    proc = start_supervisor(conveyor_dsn, e2e.schema)
    try:
        children += worker_pids(e2e, 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed_at = time.monotonic()
        took = wait_until(lambda: not any(alive(p) for p in children), 15, "children to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    print(f"children gone {time.monotonic() - killed_at:.2f}s after the supervisor was killed")
    assert took < 10
