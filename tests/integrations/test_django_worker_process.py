"""``python manage.py conveyor_worker`` as a process: how it stops, and how it refuses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_project"


def _environment(dsn: str, schema: str) -> dict[str, str]:
    return {
        **os.environ,
        "CONVEYOR_DATABASE_URL": dsn,
        "CONVEYOR_SCHEMA": schema,
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
    }


def _wait_until_listening(dsn: str, schema: str, worker: subprocess.Popen[bytes]) -> None:
    """Until the worker's LISTEN connection is up, so the worker is idle and waiting."""
    deadline = time.monotonic() + 30
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            assert worker.poll() is None, "the worker ended before it was listening"
            listening = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND (query LIKE 'LISTEN%%' OR query = 'SELECT 1')",
                (f"conveyor-worker {schema}",),
            ).fetchone()
            if listening and listening[0]:
                return
            time.sleep(0.05)
    raise AssertionError("the worker never listened")


def test_an_idle_worker_exits_within_half_a_second_of_sigterm(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "conveyor_worker"],
        cwd=EXAMPLE,
        env=_environment(conveyor_dsn, conveyor_schema),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_until_listening(conveyor_dsn, conveyor_schema, worker)
        time.sleep(0.3)  # well inside the wait for a notification
        sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(10)
        took = time.monotonic() - sent
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    out, err = worker.communicate()
    assert worker.returncode == 0, err.decode()
    assert b"ran 0 task attempts" in out
    assert took < 0.5, f"{took:.3f}s from SIGTERM to exit"


def test_an_unknown_backend_is_a_one_line_command_error(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "conveyor_worker", "--backend", "nope"],
        cwd=EXAMPLE,
        env=_environment(conveyor_dsn, conveyor_schema),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("CommandError: ") and "'nope'" in line
