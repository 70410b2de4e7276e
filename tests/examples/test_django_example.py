"""The Django example project as its README runs it: ``conveyor migrate``, a signup posted to its
view (202), the task's status (200, then SUCCESSFUL with its result once ``conveyor_worker
--burst`` ran it), and an unknown task id answered 404 (it was a 500: the view let Django's
TaskResultDoesNotExist escape)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("django")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_project"

CLIENT = """
import json, sys
import django
django.setup()
from django.test import Client
client = Client(raise_request_exception=False)
action, arg = sys.argv[1], sys.argv[2]
if action == "signup":
    response = client.post("/signup", {"email": arg})
else:
    response = client.get("/tasks/" + arg)
print(json.dumps({"status": response.status_code, "body": json.loads(response.content)}))
"""


def test_the_django_example_views_answer(conveyor_dsn: str, conveyor_schema: str) -> None:
    env = {
        **os.environ,
        "CONVEYOR_DATABASE_URL": conveyor_dsn,
        "CONVEYOR_SCHEMA": conveyor_schema,
        "DJANGO_SETTINGS_MODULE": "mysite.settings",
        "PYTHONPATH": str(EXAMPLE),
    }

    def run(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, *args], cwd=EXAMPLE, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def view(action: str, arg: str) -> dict[str, object]:
        return dict(json.loads(run("-c", CLIENT, action, arg)))

    run("-m", "conveyor.cli", "migrate")
    signed_up = view("signup", "ada@example.com")
    assert signed_up["status"] == 202
    task_id = str(signed_up["body"]["task"])  # type: ignore[index]
    assert view("status", task_id) == {"status": 200, "body": {"status": "READY"}}
    run("manage.py", "conveyor_worker", "--burst")
    done = view("status", task_id)
    assert done["status"] == 200
    assert done["body"]["status"] == "SUCCESSFUL"  # type: ignore[index]
    assert done["body"]["result"]["to"] == "ada@example.com"  # type: ignore[index]
    missing = view("status", "no-such-task")
    assert missing == {"status": 404, "body": {"error": "no such task", "task": "no-such-task"}}
