"""The ``conveyor`` command against a database it cannot use: the first connection error comes
out at once, as one line with its cause and the documented exit code; and the global ``--dsn``
and ``--schema`` reach every command, ``worker APP`` included."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from conveyor import Conveyor, JobState
from conveyor.cli import EXIT_DATABASE, EXIT_USAGE
from tests.e2e.cli import no_database_env

# Generous: the errors come within about a second (most of it Python starting).
BOUND = 10.0


def causes(dsn: str) -> dict[str, tuple[str, str]]:
    """A DSN per way of being unreachable, and words of its cause the error must carry."""
    return {
        "wrong port": (make_conninfo(dsn, port=1), "Connection refused"),
        "unknown host": (make_conninfo(dsn, host="no-such-host.invalid"), "no-such-host.invalid"),
        "unknown database": (make_conninfo(dsn, dbname="no_such_db"), '"no_such_db" does not'),
        "unknown role": (make_conninfo(dsn, user="no_such_role"), '"no_such_role" does not'),
        "mysql": ("mysql://root@127.0.0.1:3306/app", "'mysql'"),
    }


def run(*args: str, cwd: Path | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", *args],
        cwd=cwd or Path(__file__).resolve().parents[2],
        env=no_database_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, time.monotonic() - start


def assert_one_line_error(done: subprocess.CompletedProcess[str], code: int, cause: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("conveyor: error: ")
    assert cause in lines[0]


@pytest.mark.parametrize(
    "cause", ["wrong port", "unknown host", "unknown database", "unknown role", "mysql"]
)
def test_status_names_the_cause_at_once(conveyor_dsn: str, cause: str) -> None:
    dsn, words = causes(conveyor_dsn)[cause]
    done, took = run("--dsn", dsn, "status")
    assert_one_line_error(done, EXIT_USAGE if cause == "mysql" else EXIT_DATABASE, words)
    assert took < BOUND


SOME_ID = "0190f1f4-6c2e-7c4e-8a51-1f6f7f0a0b0c"


@pytest.mark.parametrize(
    "command",
    [["jobs", "list"], ["dead", "list"], ["workers"], ["retry", SOME_ID], ["cancel", SOME_ID]],
    ids=lambda c: c[0],
)
def test_every_operator_command_names_the_cause_at_once(
    conveyor_dsn: str, command: list[str]
) -> None:
    dsn, words = causes(conveyor_dsn)["wrong port"]
    done, took = run("--dsn", dsn, *command)
    assert_one_line_error(done, EXIT_DATABASE, words)
    assert took < BOUND


@pytest.mark.parametrize(
    "cause", ["wrong port", "unknown host", "unknown database", "unknown role", "mysql"]
)
def test_send_names_the_cause_at_once(conveyor_dsn: str, cause: str) -> None:
    dsn, words = causes(conveyor_dsn)[cause]
    start = time.monotonic()
    with Conveyor(dsn) as app, pytest.raises(Exception) as raised:
        app.send("q.x", {})
    assert time.monotonic() - start < BOUND
    assert words in str(raised.value)
    assert "\n" not in str(raised.value)


APP_WITHOUT_DSN = """
from conveyor import Conveyor, Job

app = Conveyor(schema="not_this_schema")


@app.job("cli.global")
def handle(job: Job) -> str:
    return "ran"
"""


def test_global_dsn_and_schema_reach_the_worker_of_an_app_that_names_neither(
    conveyor_dsn: str, conveyor_schema: str, tmp_path: Path
) -> None:
    (tmp_path / "nodsn_app.py").write_text(textwrap.dedent(APP_WITHOUT_DSN))
    with Conveyor(conveyor_dsn, schema=conveyor_schema) as app:
        job_id = app.send("cli.global", {})
        options = ["--dsn", conveyor_dsn, "--schema", conveyor_schema]
        done, _ = run(*options, "worker", "nodsn_app:app", "--burst", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        job = app.get_job(job_id)
        assert (job.state, job.result) == (JobState.COMPLETED, "ran")
        # --app takes them too.
        done, _ = run(*options, "--app", "nodsn_app:app", "jobs", "show", str(job_id), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "completed" in done.stdout


def test_dev_refuses_a_dsn_it_cannot_use(conveyor_dsn: str) -> None:
    done, _ = run("--dsn", conveyor_dsn, "dev")
    assert_one_line_error(done, EXIT_USAGE, "--dsn does not apply to `conveyor dev`")
    assert "Traceback" not in done.stderr
