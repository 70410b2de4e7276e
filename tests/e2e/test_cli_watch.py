"""``conveyor jobs watch`` and the progress bars of long commands: live on a terminal (a pty),
off when the output is piped or with ``--json``."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner, Result

from conveyor import Conveyor, Fail, Job
from conveyor.cli import main


@pytest.fixture
def run(conveyor_dsn: str, conveyor_schema: str) -> Any:
    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, ["--dsn", conveyor_dsn, "--schema", conveyor_schema, *args])

    return invoke


def in_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run ``conveyor ARGS`` with stdout and stderr on a pseudo-terminal; what it wrote."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", *args],
        stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, env=env,
    )  # fmt: skip
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert proc.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


@pytest.fixture
def env(conveyor_dsn: str, conveyor_schema: str) -> dict[str, str]:
    return {
        **os.environ, "CONVEYOR_DATABASE_URL": conveyor_dsn, "CONVEYOR_SCHEMA": conveyor_schema,
        "COLUMNS": "160", "TERM": "xterm",
    }  # fmt: skip


def test_watch_a_queue_once(app: Conveyor, run: Any) -> None:
    ids = [app.send("email.send", {"n": i}) for i in range(3)]
    app.send("other", {})
    result = run("jobs", "watch", "--queue", "email.send", "--once")
    assert result.exit_code == 0, result.output
    assert "email.send at " in result.stdout and "created 3" in result.stdout
    assert all(str(i) in result.stdout for i in ids)
    assert "other" not in result.stdout


def test_watch_refreshes_count_times_and_speaks_json(app: Conveyor, run: Any) -> None:
    job_id = app.send("email.send", {"to": "ada"})
    result = run("jobs", "watch", "--count", "3", "--interval", "0.01", "--json")
    frames = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(frames) == 3
    assert all([j["id"] for j in frame] == [str(job_id)] for frame in frames)


def test_watch_one_job_shows_its_progress_and_last_error(app: Conveyor, run: Any) -> None:
    def report(job: Job) -> None:
        job.report_progress(40, "halfway")
        raise Fail("disk full")

    app.job("export", report, retry_limit=0)
    job_id = app.send("export", {})
    app.drain(["export"])
    result = run("jobs", "watch", str(job_id), "--once")
    assert result.exit_code == 0, result.output
    assert "failed" in result.stdout and "40% halfway" in result.stdout
    assert "disk full" in result.stdout


def test_watch_refuses_an_id_with_a_queue_and_a_missing_job(run: Any) -> None:
    both = run("jobs", "watch", "01a2389b-9a18-7000-a13d-ed03ab59961b", "--queue", "q", "--once")
    assert both.exit_code == 2 and "not both" in both.stderr
    missing = run("jobs", "watch", "01a2389b-9a18-7000-a13d-ed03ab59961b", "--once")
    assert missing.exit_code == 4


def test_watch_on_a_terminal_redraws_in_place(app: Conveyor, env: dict[str, str]) -> None:
    app.send("email.send", {})
    shown = in_terminal(["jobs", "watch", "--count", "2", "--interval", "0.05"], env)
    assert "every queue at" in shown
    assert "\x1b[" in shown  # the live display moves the cursor to redraw


def test_progress_bars_show_on_a_terminal_only(
    app: Conveyor, env: dict[str, str], conveyor_dsn: str, conveyor_schema: str
) -> None:
    app.job("q", lambda job: (_ for _ in ()).throw(Fail("no")), retry_limit=0)
    app.send("q", {})
    app.drain(["q"])
    shown = in_terminal(["dead", "retry", "--queue", "q", "--all"], env)
    assert "Retrying the dead letters of q" in shown
    assert "queued again: 1 dead letters of q" in shown
    piped = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "dead", "purge", "--yes"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr == "" and "Deleting" not in piped.stdout
    as_json = in_terminal(["migrate", "--json"], env)
    assert "Applying" not in as_json and json.loads(as_json.strip()) == {"applied": []}
