"""``conveyor queues pause|resume`` and the bulk actions ``conveyor jobs
cancel|retry|delete|reprioritize`` against a real PostgreSQL, through click's CliRunner."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner, Result

from conveyor import Conveyor, JobState
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


def test_queues_pause_and_resume_and_the_paused_column(app: Conveyor, run: Any) -> None:
    app.send("mail", {})
    app.send("sms", {})
    assert as_json(run("queues", "pause", "mail", "--json")) == {"queue": "mail", "paused": True}
    assert [(q["name"], q["paused"]) for q in as_json(run("queues", "--json"))] == [
        ("mail", True),
        ("sms", False),
    ]
    table = run("queues")
    assert table.exit_code == 0 and "paused" in table.stdout
    status = as_json(run("status", "--json"))
    assert [(q["queue"], q["paused"]) for q in status["queues"]] == [("mail", True), ("sms", False)]
    health = as_json(run("health", "--json"))
    assert [q["paused"] for q in health["queues"]] == [True, False]
    resumed = run("queues", "resume", "mail")
    assert (resumed.exit_code, resumed.stdout) == (0, "queue mail is running\n")
    assert not app.get_queue("mail").paused


def test_pausing_an_unknown_queue_exits_4_with_one_line(run: Any) -> None:
    result = run("queues", "pause", "nowhere")
    assert result.exit_code == 4
    assert result.stderr == "conveyor: error: no queue named 'nowhere'\n"
    bad = run("queues", "resume", "bad name!")
    assert bad.exit_code == 2 and len(bad.stderr.splitlines()) == 1


def test_a_bulk_cancel_asks_with_the_count_and_declining_changes_nothing(
    app: Conveyor, run: Any
) -> None:
    app.send_batch([("mail", {"n": n}) for n in range(3)])
    declined = run("jobs", "cancel", "--queue", "mail", input="n\n")
    assert declined.exit_code == 1
    assert "Cancel 3 jobs?" in declined.stderr
    assert declined.stderr.endswith("conveyor: error: nothing changed\n")
    assert app.queue_stats("mail").queued == 3
    accepted = run("jobs", "cancel", "--queue", "mail", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert accepted.stdout == "cancelled: 3 of 3 matching jobs\n"
    assert app.queue_stats("mail").counts[JobState.CANCELLED] == 3


def test_bulk_dry_run_yes_and_json(app: Conveyor, run: Any) -> None:
    app.send_batch([("mail", {"to": f"{n}@acme.test"}) for n in range(4)])
    app.send("mail", {"to": "x@other.test"})
    dry = as_json(run("jobs", "retry", "--queue", "mail", "--search", "acme", "--dry-run",
                      "--json"))  # fmt: skip
    assert dry == {"action": "retry", "dry_run": True, "matched": 4, "affected": 0}
    text = run("jobs", "delete", "--search", "acme", "--state", "created", "--dry-run")
    assert text.stdout == "4 jobs match (dry run: nothing changed)\n"
    done = as_json(
        run("jobs", "reprioritize", "--queue", "mail", "--search", "acme", "--priority", "9",
            "--batch-size", "3", "--yes", "--json")
    )  # fmt: skip
    assert done == {"action": "reprioritize", "dry_run": False, "matched": 4, "affected": 4}
    assert sorted(j.priority for j in app.list_jobs("mail")) == [0, 9, 9, 9, 9]
    gone = as_json(run("jobs", "delete", "--older-than", "0s", "--yes", "--json"))
    assert (gone["matched"], gone["affected"]) == (5, 5)


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["jobs", "cancel"], 2),  # no filter
        (["jobs", "cancel", "--state", "completed"], 2),  # not a state cancel applies to
        (["jobs", "cancel", "--queue", "mail", "--older-than", "soon"], 2),
        (["jobs", "reprioritize", "--queue", "mail", "--yes"], 2),  # no --priority
        (["jobs", "delete", "--queue", "mail", "--batch-size", "0", "--yes"], 2),
        (["jobs", "cancel", "--queue", "bad name!", "--yes"], 2),
    ],
)
def test_bulk_bad_input_exits_2_with_one_line_and_changes_nothing(
    app: Conveyor, run: Any, args: list[str], code: int
) -> None:
    app.send_batch([("mail", {"n": n}) for n in range(2)])
    result = run(*args)
    assert result.exit_code == code
    assert len(result.stderr.strip().splitlines()) == 1
    assert app.queue_stats("mail").queued == 2
    assert {j.priority for j in app.list_jobs("mail")} == {0}


def test_queues_fair_and_send_with_a_fair_key(app: Conveyor, run: Any) -> None:
    sent = as_json(run("send", "tenants", '{"n": 1}', "--fair-key", "t-42", "--json"))
    assert app.get_job(sent["id"]).fair_key == "t-42"
    assert as_json(run("queues", "fair", "tenants", "--json")) == {"queue": "tenants", "fair": True}
    assert [(q["name"], q["fair"]) for q in as_json(run("queues", "--json"))] == [("tenants", True)]
    table = run("queues")
    assert table.exit_code == 0 and "fair" in table.stdout
    off = run("queues", "fair", "tenants", "--off")
    assert (off.exit_code, off.stdout) == (0, "queue tenants is not fair\n")
    assert not app.get_queue("tenants").fair
    missing = run("queues", "fair", "nowhere")
    assert missing.exit_code == 4 and len(missing.stderr.splitlines()) == 1
    bad = run("send", "tenants", "{}", "--fair-key", "")
    assert bad.exit_code != 0 and "fair_key" in bad.stderr
    assert len(app.list_jobs()) == 1
