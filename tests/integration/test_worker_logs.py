"""What ``conveyor worker`` writes to its log, read from real worker processes: a startup line,
a line per failed attempt, retry and dead letter, the shutdown lines; key=value or JSON."""

from __future__ import annotations

import json
import logging
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from conveyor import Conveyor, Job, JobState
from conveyor.worker.logs import JsonFormatter, LogfmtFormatter

PASSWORD = "s3cret-never-logged"

APP_MODULE = """
from conveyor import Conveyor, Fail

app = Conveyor({dsn!r}, schema={schema!r})


@app.job("boom", retry_limit=1, retry_delay=0)
async def explode(job):
    raise ValueError("it broke: \\"badly\\"\\nsecond line")


@app.job("boom.sync", retry_limit=3)
def give_up(job):
    raise Fail("no point retrying")


@app.job("fine")
def fine(job):
    return 1
"""

LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, Any]:
    return {
        key: json.loads(value) if value.startswith('"') else value
        for key, value in LOGFMT_PAIR.findall(line)
    }


class Output:
    """The lines a worker writes (stdout and stderr together), read by a thread."""

    def __init__(self, proc: subprocess.Popen[str], parse: Callable[[str], dict[str, Any]]):
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._parse = parse
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _take(self, line: str) -> None:
        self.raw.append(line)
        self.lines.append(self._parse(line))

    def until(self, check: Callable[[dict[str, Any]], bool], timeout: float = 30) -> None:
        """Read until a line satisfies ``check``."""
        deadline = time.monotonic() + timeout
        while not any(check(line) for line in self.lines):
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError("no such line in:\n" + "\n".join(self.raw)) from None
            if line is None:
                raise AssertionError("output ended first:\n" + "\n".join(self.raw))
            self._take(line)

    def rest(self) -> None:
        """Read to the end of the output (once the process ended)."""
        self._thread.join(timeout=30)
        while (line := self._queue.get_nowait()) is not None:
            self._take(line)

    def find(self, **fields: Any) -> list[dict[str, Any]]:
        return [line for line in self.lines if all(line.get(k) == v for k, v in fields.items())]


@pytest.fixture
def worker_app(conveyor_dsn: str, conveyor_schema: str, tmp_path: Path) -> Iterator[Path]:
    """A module ``logsapp`` in a directory of its own, whose DSN carries a password (the test
    server trusts local connections, so it is never checked, only carried)."""
    dsn = make_conninfo(conveyor_dsn, password=PASSWORD)
    (tmp_path / "logsapp.py").write_text(
        textwrap.dedent(APP_MODULE.format(dsn=dsn, schema=conveyor_schema))
    )
    yield tmp_path


def start(where: Path, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "worker", "logsapp:app", *options],
        cwd=where,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def first_frame(trace: str) -> str:
    return next(line for line in trace.splitlines() if line.lstrip().startswith("File "))


def test_a_worker_logs_its_start_every_failure_retry_and_dead_letter_and_its_stop(
    app: Conveyor, conveyor_dsn: str, conveyor_schema: str, worker_app: Path
) -> None:
    # The test's app sends without the worker app's handler defaults: the same options, given.
    boom = app.send("boom", {}, retry_limit=1, retry_delay=0)
    give_up = app.send("boom.sync", {})
    fine = app.send("fine", {})
    proc = start(worker_app, "--burst", "--concurrency", "3")
    out = Output(proc, parse_logfmt)
    assert proc.wait(timeout=60) == 0
    out.rest()
    assert all("ts" in line and "level" in line and "msg" in line for line in out.lines), out.raw
    assert PASSWORD not in "\n".join(out.raw)

    [started] = out.find(msg="worker started")
    server = conninfo_to_dict(conveyor_dsn)
    host, port = server.get("host", "localhost"), server.get("port", "5432")
    assert started["database"] == f"{host}:{port}/{server.get('dbname', '')}"
    assert started["schema"] == conveyor_schema
    assert started["queues"] == "boom,boom.sync,fine"
    assert started["concurrency"] == "3"
    assert started["level"] == "info" and started["logger"] == "conveyor.worker"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", started["version"])

    failed = out.find(msg="attempt failed", job_id=str(boom))
    assert [line["attempt"] for line in failed] == ["1", "2"], "\n".join(out.raw)
    for line in failed:
        assert (line["level"], line["queue"], line["event"]) == (
            "warning",
            "boom",
            "job.attempt_failed",
        )
        assert line["error_type"] == "ValueError"
        assert line["error"] == 'it broke: "badly"\nsecond line'
    [retried] = out.find(msg="job retried", job_id=str(boom))
    assert (retried["level"], retried["attempt"], retried["error_type"]) == (
        "info",
        "1",
        "ValueError",
    )
    [dead] = out.find(msg="job failed, in the dead letters", job_id=str(boom))
    assert (dead["level"], dead["attempt"], dead["max_attempts"]) == ("error", "2", "2")

    [fail_line] = out.find(msg="attempt failed", job_id=str(give_up))
    assert (fail_line["error_type"], fail_line["error"]) == ("Fail", "no point retrying")
    assert not out.find(msg="job retried", job_id=str(give_up))
    assert out.find(msg="job failed, in the dead letters", job_id=str(give_up))
    assert not out.find(job_id=str(fine))  # a job that succeeds costs no line at INFO

    [stopped] = out.find(msg="worker stopped")
    assert (stopped["attempts"], stopped["worker_id"]) == ("4", started["worker_id"])
    assert [line for line in out.lines if line["logger"].startswith("conveyor")][-1] is stopped

    # The traceback stored by a CLI worker starts in the handler.
    job = app.get_job(boom)
    assert job.state == JobState.FAILED and job.error is not None
    assert "no running event loop" not in job.error["traceback"]
    assert first_frame(job.error["traceback"]).endswith("in explode")


def test_json_lines_and_a_graceful_shutdown(
    app: Conveyor, conveyor_schema: str, worker_app: Path
) -> None:
    proc = start(
        worker_app, "--log-format", "json", "--log-level", "debug", "--poll-interval", "0.1"
    )
    out = Output(proc, json.loads)
    try:
        out.until(lambda line: line.get("msg") == "worker started")
        fine = app.send("fine", {})
        boom = app.send("boom", {}, retry_limit=1, retry_delay=0)
        out.until(lambda line: line.get("msg") == "job failed, in the dead letters")
        out.until(lambda line: line.get("msg") == "job completed")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    out.rest()
    assert code == 0
    [started] = out.find(msg="worker started")
    assert started["queues"] == ["boom", "boom.sync", "fine"]
    assert started["concurrency"] == 10 and started["schema"] == conveyor_schema
    failed = out.find(msg="attempt failed", job_id=str(boom))
    assert [(line["attempt"], line["error_type"]) for line in failed] == [
        (1, "ValueError"),
        (2, "ValueError"),
    ]
    assert failed[0]["error"] == 'it broke: "badly"\nsecond line'
    assert "ValueError" in failed[0]["traceback"]  # tracebacks at DEBUG
    # At DEBUG, successful attempts have their lines too.
    assert out.find(msg="attempt started", job_id=str(fine))
    assert out.find(msg="job completed", job_id=str(fine), level="debug")
    # The shutdown lines: the signal, then the worker's last line (at DEBUG, other libraries'
    # lines may follow, such as the pool's).
    ours = [line for line in out.lines if line["logger"].startswith("conveyor")]
    signalled = [i for i, line in enumerate(ours) if line["msg"].startswith("SIGTERM")]
    assert len(signalled) == 1 and ours[signalled[0]]["logger"] == "conveyor.worker"
    assert ours[-1]["msg"] == "worker stopped" and signalled[0] < len(ours) - 1
    assert PASSWORD not in "\n".join(out.raw)


def test_the_formats_keep_one_record_on_one_line() -> None:
    record = logging.LogRecord(
        "conveyor.job", logging.WARNING, __file__, 1, "attempt %s", ("failed",), None
    )
    record.job_id = "j1"
    record.queue = "a b"
    record.attempt = 2
    record.ok = True
    try:
        raise KeyError("x")
    except KeyError:
        record.exc_info = sys.exc_info()
    line = LogfmtFormatter().format(record)
    assert "\n" not in line
    fields = parse_logfmt(line)
    assert (fields["level"], fields["msg"], fields["queue"]) == ("warning", "attempt failed", "a b")
    assert (fields["attempt"], fields["ok"]) == ("2", "true")
    assert fields["exc"].startswith("Traceback") and "KeyError" in fields["exc"]
    as_json = JsonFormatter().format(record)
    assert "\n" not in as_json
    parsed = json.loads(as_json)
    assert (parsed["job_id"], parsed["attempt"], parsed["logger"]) == ("j1", 2, "conveyor.job")
    assert parsed["ts"].endswith("Z")


def test_log_options_are_checked(worker_app: Path) -> None:
    proc = start(worker_app, "--log-format", "xml", "--burst")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "--log-format" in out


def test_a_plain_formatter_gets_a_whole_sentence(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    """An app with a logging set-up of its own (``%(message)s``) still learns which job failed,
    how, and what happens next."""

    @app.job("plain", retry_limit=1, retry_delay=0)
    def plain(job: Job) -> None:
        raise KeyError("missing")

    caplog.set_level(logging.INFO, logger="conveyor")
    job_id = app.send("plain", {})
    app.drain()
    said = [r.getMessage() for r in caplog.records if r.name == "conveyor.job"]
    who = f"job {job_id} (queue plain)"
    assert said == [
        f"{who} attempt 1/2 failed: KeyError: 'missing'",
        f"{who} queued again after attempt 1/2 failed",
        f"{who} attempt 2/2 failed: KeyError: 'missing'",
        f"{who} failed for good after attempt 2/2, now in the dead letters: KeyError: 'missing'",
    ]
    [started] = [r.getMessage() for r in caplog.records if r.name == "conveyor.worker"][:1]
    assert started.startswith("worker ") and f"schema {app.schema}, queues plain" in started
