"""``conveyor demo`` on the embedded PostgreSQL, as on a machine with no server: emails reach
the sink, an export reports progress to 100, a webhook lands in the dead letters, the flaky CRM
sync completes after retries, and the dashboard answers with the printed token."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.cli import ROOT, Lines, conveyor, no_database_env, server_running

DURATION = 20


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """The first truthy value of ``check()`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"within {timeout}s: {what}")


def test_demo_runs_the_helpdesk_end_to_end_on_the_embedded_server(
    embedded_dir: Path, tmp_path: Path
) -> None:
    data_dir = embedded_dir
    command = [
        sys.executable, "-m", "conveyor.cli", "demo", "--embedded", "--data-dir", str(data_dir),
        "--duration", str(DURATION), "--port", "0", "--no-browser", "--interval", "1",
    ]  # fmt: skip
    env = {**no_database_env(), "HELPDESK_REPORTS": str(tmp_path / "reports")}
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines = Lines(proc)
        url = lines.until("Dashboard:").split()[-1]
        token = lines.until("Token:").split()[1]
        assert "embedded PostgreSQL" in "\n".join(lines.seen)
        # The printed DSN lets another terminal join the demo's database.
        dsn = next(line for line in lines.seen if line.strip().startswith("DSN:")).split()[1]
        joined = conveyor("--dsn", dsn, "status", "--json")
        assert joined.returncode == 0, joined.stderr
        with httpx.Client(base_url=url, timeout=10) as http:
            auth = {"Authorization": f"Bearer {token}"}

            def api(path: str, **params: Any) -> list[dict[str, Any]]:
                response = http.get(path, params=params, headers=auth)
                assert response.status_code == 200, response.text
                return list(response.json()["jobs"])

            assert http.get("/api/jobs").status_code == 401
            # The login link signs a browser in once; the token is not in it.
            printed = next(line for line in lines.seen if line.strip().startswith("Log in:"))
            link = printed.split()[2]
            assert token not in link
            with httpx.Client(timeout=10, follow_redirects=True) as browser:
                signed_in = browser.get(link)
                assert signed_in.status_code == 200 and str(signed_in.url) == url
                assert browser.get(f"{url}api/jobs").status_code == 200
            with httpx.Client(timeout=10) as browser:
                assert browser.get(link).status_code == 401
            assert (
                http.get("/api/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
            )

            mailbox = eventually(
                lambda: http.get("/mail/messages.json").json()["messages"], 15, "an email arrives"
            )
            subjects = {m["subject"] for m in mailbox}
            assert "Welcome to InsightDesk!" in subjects
            assert all(m["to"].endswith(".example") for m in mailbox)

            report = eventually(
                lambda: api("/api/jobs", queue="reports.export", state="completed"),
                20,
                "an export completes",
            )[0]
            assert report["progress"]["percent"] == 100
            assert Path(report["result"]["path"]).read_text().startswith("id,subject,status")
            eventually(
                lambda: api("/api/jobs", queue="reports.ready", state="completed"),
                10,
                "the export's on_complete hook runs",
            )

            eventually(
                lambda: api("/api/jobs", queue="reports.digest", state="completed"),
                10,
                "the digest runs",
            )
            assert "Daily digest" in {
                m["subject"] for m in http.get("/mail/messages.json").json()["messages"]
            }
            delays = {
                round(
                    (
                        datetime.fromisoformat(j["run_at"])
                        - datetime.fromisoformat(j["created_at"])
                    ).total_seconds()
                )
                for j in api("/api/jobs", queue="sla.check", limit=100)
            }
            assert delays == {15, 45}, "SLA checks wait for the ticket's deadlines"

            dead = eventually(lambda: api("/api/dead"), 20, "a job lands in the dead letters")
            assert dead[0]["queue"] == "ticket.webhook"
            assert dead[0]["attempt"] == dead[0]["max_attempts"] == 3
            assert "Connection refused" in dead[0]["errors"][-1]["message"]

            synced = eventually(
                lambda: api("/api/jobs", queue="crm.sync", state="completed"),
                20,
                "a CRM sync completes",
            )[0]
            assert synced["attempt"] == 3
            assert [e["type"] for e in synced["errors"]] == ["TimeoutError", "TimeoutError"]
        assert proc.wait(timeout=DURATION + 60) == 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    output = lines.rest()
    assert any("is dead (see Dead letters)" in line for line in output), output
    assert any(line.startswith("Emails received by the mail sink:") for line in output)
    assert not server_running(data_dir)


def test_without_the_extra_one_line_and_exit_2(tmp_path: Path) -> None:
    # A module of the mail sink's name that fails to import stands in for the missing extra.
    fake = tmp_path / "site" / "aiosmtpd"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**no_database_env(), "PYTHONPATH": str(fake.parent)}
    done = conveyor("demo", "--duration", "1", "--no-browser", env=env)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "conveyor: error: the demo needs the extra: pip install 'conveyor[embedded]' "
        "(not installed)"
    ]
