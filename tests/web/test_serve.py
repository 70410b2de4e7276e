"""``serve`` (what ``conveyor dashboard`` runs) in a real process: a token is made and printed
when none is given, the API answers to it, and an interrupt stops the server cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def dashboard(dsn: str, schema: str, *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_DASHBOARD_TOKEN"}
    command = [sys.executable, "-m", "conveyor.cli", "--dsn", dsn, "--schema", schema]
    process = subprocess.Popen(
        [*command, "dashboard", "--port", str(port), *args],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                httpx.get(url + "/login", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the dashboard did not start"
                time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=20)


def test_serve_makes_a_token_and_prints_it_when_none_is_given(
    conveyor_dsn: str, conveyor_schema: str
) -> None:
    with dashboard(conveyor_dsn, conveyor_schema) as (url, process):
        assert httpx.get(url + "/api/queues").status_code == 401
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
        output = process.stderr.read() if process.stderr else ""
    assert "generated one for this run" in output
    token = output.split("generated one for this run:")[1].split()[0]
    assert len(token) >= 24

    with dashboard(conveyor_dsn, conveyor_schema, "--token", token) as (url, process):
        response = httpx.get(url + "/api/queues", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200 and response.json() == {"queues": []}
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 0
        output = process.stderr.read() if process.stderr else ""
    assert token not in output and "generated" not in output
