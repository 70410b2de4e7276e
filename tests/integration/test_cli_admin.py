"""The operator commands of the CLI against a real PostgreSQL, through click's CliRunner."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from click.testing import CliRunner, Result

from conveyor import Conveyor, Fail, Job, JobState
from conveyor.cli import main


@pytest.fixture
def run(conveyor_dsn: str, conveyor_schema: str) -> Any:
    """Run ``conveyor --dsn ... --schema ... ARGS``."""

    def invoke(*args: str, input: str | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(
            main, ["--dsn", conveyor_dsn, "--schema", conveyor_schema, *args], input=input
        )

    return invoke


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def always_fail(job: Job) -> None:
    raise Fail("broken on purpose")


def boom(job: Job) -> None:
    raise ValueError("kaboom")


def done(job: Job) -> dict[str, int]:
    return {"total": 42}


def dead_letters(app: Conveyor, queue: str, n: int) -> list[UUID]:
    app.job(queue, always_fail, retry_limit=0)
    ids = [app.send(queue, {"n": i}) for i in range(n)]
    app.drain([queue])
    return ids


def test_status_counts_jobs_by_state_and_workers(app: Conveyor, run: Any) -> None:
    app.job("ok", done)
    app.send("ok", {})
    app.drain()
    app.send("ok", {})
    dead_letters(app, "bad", 1)
    report = as_json(run("status", "--json"))
    by_queue = {q["queue"]: q for q in report["queues"]}
    assert by_queue["ok"]["counts"]["completed"] == 1
    assert by_queue["ok"]["counts"]["created"] == 1
    assert by_queue["bad"]["counts"]["failed"] == 1
    assert by_queue["ok"]["oldest_waiting_seconds"] >= 0
    assert report["workers"] == {"alive": 0, "registered": 0}
    text = run("status")
    assert text.exit_code == 0
    assert "ok" in text.stdout and "completed" in text.stdout
    assert "workers: 0 alive, 0 registered" in text.stdout


def test_jobs_list_with_filters(app: Conveyor, run: Any) -> None:
    alice = app.send("mail", {"to": "alice@example.com"})
    bob = app.send("mail", {"to": "bob@example.com"})
    other = app.send("sms", {"to": "alice"})
    listed = as_json(run("jobs", "list", "--json"))
    assert [j["id"] for j in listed] == [str(other), str(bob), str(alice)]
    assert listed[0]["state"] == "created" and listed[0]["data"] == {"to": "alice"}
    found = as_json(run("jobs", "list", "--queue", "mail", "--search", "ALICE", "--json"))
    assert [j["id"] for j in found] == [str(alice)]
    assert len(as_json(run("jobs", "list", "--state", "created", "--since", "1h", "--json"))) == 3
    assert as_json(run("jobs", "list", "--state", "completed", "--json")) == []
    assert as_json(run("jobs", "list", "--since", "2999-01-01T00:00:00", "--json")) == []
    page = as_json(run("jobs", "list", "--limit", "1", "--offset", "1", "--json"))
    assert [j["id"] for j in page] == [str(bob)]
    table = run("jobs", "list", "--queue", "mail")
    assert table.exit_code == 0
    assert (
        str(alice) in table.stdout and str(bob) in table.stdout and str(other) not in table.stdout
    )


def test_jobs_list_refuses_bad_filters(run: Any) -> None:
    result = run("jobs", "list", "--since", "yesterday")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--since" in result.stderr
    assert run("jobs", "list", "--limit", "0").exit_code == 2
    assert run("jobs", "list", "--queue", "bad name!").exit_code == 2


def test_jobs_show_payload_result_errors_and_traceback(app: Conveyor, run: Any) -> None:
    app.job("ok", done)
    ok = app.send("ok", {"a": [1, 2]})
    app.job("flaky", boom, retry_limit=0)
    failed = app.send("flaky", {"b": "[not markup]"})
    app.drain()
    shown = as_json(run("jobs", "show", str(ok), "--json"))
    assert shown["result"] == {"total": 42} and shown["state"] == "completed"
    assert shown["data"] == {"a": [1, 2]}
    text = run("jobs", "show", str(failed))
    assert text.exit_code == 0
    assert "state     failed" in text.stdout
    assert "[not markup]" in text.stdout
    assert "ValueError: kaboom" in text.stdout
    assert "Traceback (most recent call last)" in text.stdout
    ok_text = run("jobs", "show", str(ok)).stdout
    assert '"total": 42' in ok_text and "attempt   1 of 3" in ok_text


def test_jobs_show_progress(app: Conveyor, run: Any) -> None:
    def report(job: Job) -> None:
        job.report_progress(40, "halfway-ish")
        raise Fail("stop here")

    app.job("p", report, retry_limit=0)
    job_id = app.send("p", {})
    app.drain()
    assert "40% halfway-ish" in run("jobs", "show", str(job_id)).stdout


def test_missing_and_malformed_job_ids(run: Any) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    for command in (["jobs", "show"], ["retry"], ["cancel"], ["dead", "retry"]):
        result = run(*command, missing)
        assert result.exit_code == 4, (command, result.output)
        assert result.stderr == f"conveyor: error: no job with id {missing}\n"
        assert run(*command, "not-a-uuid").exit_code == 2


def test_retry_and_cancel(app: Conveyor, run: Any) -> None:
    (dead,) = dead_letters(app, "bad", 1)
    retried = as_json(run("retry", str(dead), "--json"))
    assert retried["state"] == "created" and retried["attempt"] == 0
    result = run("cancel", str(dead))
    assert result.exit_code == 0 and result.stdout == f"job {dead} is cancelled\n"
    assert app.get_job(dead).state is JobState.CANCELLED
    app.job("ok", done)
    finished = app.send("ok", {})
    app.drain(["ok"])
    refused = run("cancel", str(finished))
    assert refused.exit_code == 5
    assert "completed" in refused.stderr and refused.stderr.count("\n") == 1
    assert run("retry", str(finished)).exit_code == 5


def test_dead_list_and_retry_one_or_all(app: Conveyor, run: Any) -> None:
    a = dead_letters(app, "a", 2)
    b = dead_letters(app, "b", 1)
    listed = as_json(run("dead", "list", "--json"))
    assert {j["id"] for j in listed} == {str(i) for i in a + b}
    assert all(j["errors"][0]["message"] == "broken on purpose" for j in listed)
    only_b = as_json(run("dead", "list", "--queue", "b", "--json"))
    assert [j["id"] for j in only_b] == [str(b[0])]
    assert str(b[0]) in run("dead", "list").stdout
    one = as_json(run("dead", "retry", str(b[0]), "--json"))
    assert one["id"] == str(b[0]) and one["state"] == "created"
    assert as_json(run("dead", "retry", "--queue", "a", "--all", "--json")) == {"retried": 2}
    assert as_json(run("dead", "list", "--json")) == []
    assert run("dead", "list").stdout == "no dead letters\n"


def test_dead_retry_needs_an_id_or_a_queue_with_all(app: Conveyor, run: Any) -> None:
    (job_id,) = dead_letters(app, "a", 1)
    for args in ([], ["--queue", "a"], ["--all"], [str(job_id), "--all"]):
        result = run("dead", "retry", *args)
        assert result.exit_code == 2, args
        assert result.stderr.startswith("conveyor: error: ")
    app.job("ok", done)
    finished = app.send("ok", {})
    app.drain(["ok"])
    assert run("dead", "retry", str(finished)).exit_code == 5


def test_dead_purge_asks_first(app: Conveyor, run: Any) -> None:
    dead_letters(app, "a", 2)
    dead_letters(app, "b", 1)
    declined = run("dead", "purge", "--queue", "a", input="n\n")
    assert declined.exit_code == 1
    assert "Delete the dead letters of queue a?" in declined.stderr
    assert len(app.list_dead()) == 3
    confirmed = run("dead", "purge", "--queue", "a", input="y\n")
    assert confirmed.exit_code == 0 and "deleted: 2 dead letters" in confirmed.stdout
    assert as_json(run("dead", "purge", "--yes", "--json")) == {"deleted": 1}


def test_dead_purge_older_than(conveyor_dsn: str, conveyor_schema: str, run: Any) -> None:
    from conveyor import FrozenClock

    clock = FrozenClock()
    with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        clock.advance(-timedelta(days=3))
        old = dead_letters(app, "a", 1)
    with Conveyor(conveyor_dsn, schema=conveyor_schema) as app:
        recent = dead_letters(app, "a", 1)
        assert as_json(run("dead", "purge", "--older-than", "2d", "--yes", "--json")) == {
            "deleted": 1
        }
        assert [j.id for j in app.list_dead()] == recent
        assert old[0] not in [j.id for j in app.list_dead()]
    assert run("dead", "purge", "--older-than", "soon", "--yes").exit_code == 2


def test_queues_schedules_and_workers(app: Conveyor, run: Any) -> None:
    app.create_queue("reports", policy="singleton", retry_limit=2, rate_limit=(5, 60))
    app.schedule("digest", "0 8 * * *", queue="reports", tz="Europe/Paris")
    app.schedule("tick", every=90, queue="reports")
    queues = as_json(run("queues", "--json"))
    assert queues[0]["name"] == "reports" and queues[0]["policy"] == "singleton"
    assert "5/60s" in run("queues").stdout
    found = {s["name"]: s for s in as_json(run("schedules", "--json"))}
    assert found["digest"]["next_run"].endswith(("T06:00:00+00:00", "T07:00:00+00:00"))
    assert found["tick"]["next_run"] is not None
    text = run("schedules").stdout
    assert "0 8 * * *" in text and "every 90s" in text
    assert as_json(run("workers", "--json")) == []
    assert run("workers").stdout == "no workers\n"


def test_workers_lists_a_running_worker(
    app: Conveyor, run: Any, tmp_path: Any, conveyor_dsn: str, conveyor_schema: str
) -> None:
    import subprocess
    import time

    (tmp_path / "cliworkerapp.py").write_text(
        "from conveyor import Conveyor\n"
        f"app = Conveyor({conveyor_dsn!r}, schema={conveyor_schema!r})\n"
        "app.job('w', lambda job: None)\n"
    )
    command = [sys.executable, "-m", "conveyor.cli", "worker", "cliworkerapp:app"]
    worker = subprocess.Popen([*command, "--concurrency", "2"], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not app.list_workers() and time.monotonic() < deadline:
            time.sleep(0.05)
        (listed,) = as_json(run("workers", "--json"))
        assert listed["pid"] == worker.pid and listed["queues"] == ["w"]
        assert listed["alive"] is True and listed["heartbeat_age"] < 30
        assert "1 alive, 1 registered" in run("status").stdout
        assert str(worker.pid) in run("workers").stdout
    finally:
        worker.terminate()
        worker.wait(30)


def test_dashboard_without_the_web_extra_is_one_line(
    run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "conveyor.web", None)
    result = run("dashboard", "--port", "1")
    assert result.exit_code == 2
    assert result.stderr.startswith("conveyor: error: the dashboard needs the web extra")
    assert result.stderr.count("\n") == 1


def test_dashboard_calls_serve_with_the_options(
    run: Any, monkeypatch: pytest.MonkeyPatch, conveyor_schema: str
) -> None:
    import conveyor.web

    seen: dict[str, Any] = {}

    def serve(app: Conveyor, **options: Any) -> None:
        seen.update(options, schema=app.schema)

    monkeypatch.setattr(conveyor.web, "serve", serve)
    result = run("dashboard", "--host", "0.0.0.0", "--port", "8123", "--token", "s3cret")
    assert result.exit_code == 0, result.output
    assert seen == {"host": "0.0.0.0", "port": 8123, "token": "s3cret", "schema": conveyor_schema}
