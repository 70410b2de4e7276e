"""``conveyor send``, ``conveyor --version`` and the help of every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from typing import Any
from uuid import UUID

import click
import pytest
from click.testing import CliRunner, Result

from conveyor import Conveyor
from conveyor.cli import main


@pytest.fixture
def run(conveyor_dsn: str, conveyor_schema: str) -> Any:
    """Run ``conveyor --dsn ... --schema ... ARGS`` in this process."""

    def invoke(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(
            main, ["--dsn", conveyor_dsn, "--schema", conveyor_schema, *args], input=input
        )

    return invoke


def test_send_takes_json_data_and_maps_every_option(app: Conveyor, run: Any) -> None:
    parent = app.send("first", None)
    before = datetime.now(UTC)
    result = run(
        "send", "email.send", '{"to": "ada@example.com", "n": [1, 2]}',
        "--priority", "5", "--start-after", "10m", "--retry-limit", "3", "--retry-delay", "30s",
        "--retry-backoff", "exponential", "--retry-delay-max", "1h", "--expire-in", "2m",
        "--unique-key", "ada", "--group-key", "g1", "--dead-letter", "email.dead",
        "--depends-on", str(parent), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    sent = json.loads(result.stdout)
    assert sent["queue"] == "email.send"
    job = app.get_job(sent["id"])
    assert job.data == {"to": "ada@example.com", "n": [1, 2]}
    assert (job.priority, job.max_attempts, job.unique_key, job.group_key) == (5, 4, "ada", "g1")
    assert job.dead_letter == "email.dead"
    assert job.depends_on == [parent]
    assert timedelta(minutes=9) < job.run_at - before < timedelta(minutes=11)


def test_send_reads_data_from_stdin(app: Conveyor, run: Any) -> None:
    piped = run("send", "reports.export", input='{"report": 7}\n')
    assert piped.exit_code == 0, piped.output
    dash = run("send", "reports.export", "-", "--json", input="[1, 2, 3]")
    nothing = run("send", "reports.export", "--json")
    jobs = {j.id: j.data for j in app.list_jobs(queue="reports.export")}
    job_id = UUID(piped.stdout.split()[1])
    assert piped.stdout.strip() == f"job {job_id} sent to reports.export"
    assert jobs[job_id] == {"report": 7}
    assert jobs[UUID(json.loads(dash.stdout)["id"])] == [1, 2, 3]
    assert jobs[UUID(json.loads(nothing.stdout)["id"])] is None


def test_send_at_an_iso_time(app: Conveyor, run: Any) -> None:
    result = run("send", "later", "{}", "--start-after", "2030-01-02T03:04:05", "--json")
    assert result.exit_code == 0, result.output
    job = app.get_job(json.loads(result.stdout)["id"])
    assert job.run_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("q", "{not json"), "DATA must be JSON"),
        (("q", "{}", "--retry-backoff", "sideways"), "retry_backoff must be"),
        (("q", "{}", "--retry-limit", "-1"), "retry_limit"),
        (("q", "{}", "--start-after", "tomorrow"), "--start-after must be"),
        (("q", "{}", "--retry-delay", "soon"), "--retry-delay must be a duration"),
        (("q", "{}", "--depends-on", "not-a-uuid"), "depends_on must hold job ids"),
        (("q", "{}", "--singleton-key", "k"), "singleton_key needs singleton_seconds"),
        (("bad queue!", "{}"), "invalid queue name"),
        (("q", '"\\u0000"'), "NUL"),
    ],
)
def test_send_refuses_bad_input_with_one_line_and_exit_2(
    app: Conveyor, run: Any, args: tuple[str, ...], message: str
) -> None:
    result = run("send", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("conveyor: error: "), result.stderr
    assert message in lines[0]
    assert app.list_jobs() == []


def test_send_refuses_an_unknown_option(run: Any) -> None:
    result = run("send", "q", "{}", "--prioritty", "5")
    assert result.exit_code == 2
    assert "No such option '--prioritty'. Did you mean '--priority'?" in result.stderr


def test_send_from_the_installed_command_reads_a_pipe(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str
) -> None:
    env = {**os.environ, "CONVEYOR_DATABASE_URL": conveyor_dsn, "CONVEYOR_SCHEMA": conveyor_schema}
    done = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "send", "piped", "--json"],
        input='{"from": "a pipe"}', env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert app.get_job(json.loads(done.stdout)["id"]).data == {"from": "a pipe"}


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"conveyor {version('conveyor')}\n"


def every_command(
    group: click.Group, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = [(path, group)]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += every_command(command, (*path, name))
        else:
            found.append(((*path, name), command))
    return found


@pytest.mark.parametrize(
    ("path", "command"),
    every_command(main),
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)
def test_every_command_help_has_an_example(path: tuple[str, ...], command: click.Command) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    examples = result.stdout.partition("Example")[2]
    assert examples, f"`conveyor {' '.join(path)} --help` shows no example"
    assert "conveyor " in examples


def test_dsn_help_names_both_variables() -> None:
    help_text = " ".join(CliRunner().invoke(main, ["--help"]).stdout.split())
    assert "$CONVEYOR_DATABASE_URL" in help_text and "$DATABASE_URL" in help_text
