"""The Django task backend against the real database: Django's API enqueues inside Django's own
transaction, Conveyor's worker runs the task, and ``get_result`` reads it back."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import django
import pytest
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections, transaction
from django.test import Client, override_settings
from django.utils import timezone
from django_tasks import TaskResultStatus, task_backends
from django_tasks.exceptions import TaskResultDoesNotExist

from conveyor import Conveyor, JobNotFound
from conveyor.cli import load_app
from conveyor.integrations.django import ConveyorBackend
from conveyor.integrations.django import backend as backend_module

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_project"


@pytest.fixture
def backend(
    conveyor_dsn: str, conveyor_schema: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ConveyorBackend]:
    """The example project's settings, on this worker's schema; the backend of its tasks."""
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))  # kept: the worker imports tasks by module path
    if not apps.ready:
        monkeypatch.setenv("CONVEYOR_DATABASE_URL", conveyor_dsn)
        monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mysite.settings")
        django.setup()
    from django.conf import settings

    tasks = copy.deepcopy(settings.TASKS)
    tasks["default"]["OPTIONS"]["schema"] = conveyor_schema
    with override_settings(TASKS=tasks):
        found = task_backends["default"]
        assert isinstance(found, ConveyorBackend)
        yield found
    connections.close_all()
    # The backend shares one app per database and schema for the life of the process; a test
    # ends it, so the next test (and the leak guard) starts from nothing.
    with backend_module._apps_lock:
        shared, backend_module._apps = list(backend_module._apps.values()), {}
    for app in shared:
        app.close()


def work() -> None:
    call_command("conveyor_worker", "--burst")


def test_a_task_enqueued_in_a_committed_transaction_runs_and_reports_its_result(
    backend: ConveyorBackend,
) -> None:
    from mysite.tasks import add

    with transaction.atomic():
        result = add.enqueue(2, 3)
        with pytest.raises(JobNotFound):  # not committed yet: invisible to other connections
            backend.app.get_job(result.id)
    assert result.status == TaskResultStatus.READY
    assert add.get_result(result.id).status == TaskResultStatus.READY

    work()

    done = add.get_result(result.id)
    assert done.status == TaskResultStatus.SUCCESSFUL
    assert done.return_value == 5
    assert (done.args, done.kwargs) == ([2, 3], {})
    assert done.started_at is not None and done.finished_at is not None
    assert done.attempts == 1
    result.refresh()
    assert result.return_value == 5


def test_a_task_enqueued_in_a_rolled_back_transaction_does_not_exist(
    backend: ConveyorBackend,
) -> None:
    from mysite.tasks import add

    with pytest.raises(RuntimeError), transaction.atomic():
        result = add.enqueue(1, 1)
        raise RuntimeError("roll back")
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(result.id)
    assert backend.app.list_jobs() == []


def test_queue_priority_and_context_reach_the_job_and_the_task(backend: ConveyorBackend) -> None:
    from mysite.tasks import welcome

    result = welcome.enqueue(address="a@b.c")  # autocommit outside a transaction
    job = backend.app.get_job(result.id)
    assert (job.queue, job.priority) == ("django.emails", 10)
    work()
    done = welcome.get_result(result.id)
    assert done.return_value == {"to": "a@b.c", "attempt": 1, "id": result.id}
    assert done.task.queue_name == "emails" and done.task.priority == 10


def test_async_tasks_run(backend: ConveyorBackend) -> None:
    from mysite.tasks import shout

    result = shout.enqueue("hi")
    work()
    assert shout.get_result(result.id).return_value == "HI"


async def test_aenqueue_and_aget_result(backend: ConveyorBackend) -> None:
    from mysite.tasks import add

    result = await add.aenqueue(4, 5)
    found = await add.aget_result(result.id)
    assert found.status == TaskResultStatus.READY and found.args == [4, 5]


def test_a_failing_task_reports_its_exception(backend: ConveyorBackend) -> None:
    from mysite.tasks import explode

    result = explode.enqueue()
    work()
    failed = explode.get_result(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert len(failed.errors) == 1
    assert failed.errors[0].exception_class is ValueError
    assert "boom" in failed.errors[0].traceback
    with pytest.raises(ValueError, match="failed"):
        failed.return_value  # noqa: B018


def test_run_after_defers_the_task(backend: ConveyorBackend) -> None:
    from mysite.tasks import add

    later = timezone.now() + timedelta(hours=1)
    result = add.using(run_after=later).enqueue(1, 2)
    work()
    waiting = add.get_result(result.id)
    assert waiting.status == TaskResultStatus.READY
    assert waiting.task.run_after == later
    assert backend.app.get_job(result.id).run_at == later


def test_unknown_ids_do_not_exist(backend: ConveyorBackend) -> None:
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result("not-a-uuid")
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result("0193e3a0-0000-7000-8000-000000000000")
    foreign = backend.app.send("other.queue", {"task": "mysite.tasks.add"})
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(str(foreign))


def test_checks_report_bad_settings(backend: ConveyorBackend) -> None:
    assert list(backend.check()) == []
    bad = ConveyorBackend(
        "bad",
        {"QUEUES": ["ok", "no spaces"], "OPTIONS": {"database": "nope", "job_options": {"x": 1}}},
    )
    assert sorted(m.id for m in bad.check()) == ["conveyor.E001", "conveyor.E004", "conveyor.E005"]
    assert [m.id for m in ConveyorBackend("empty", {"QUEUES": []}).check()] == ["conveyor.E003"]
    with pytest.raises(ImproperlyConfigured, match="unknown OPTIONS"):
        ConveyorBackend("typo", {"OPTIONS": {"shcema": "x"}})


def test_the_cli_loads_the_worker_app(backend: ConveyorBackend) -> None:
    app = load_app("conveyor.integrations.django:app")
    assert isinstance(app, Conveyor) and app is backend.app
    assert app.schema == backend.app.schema
    assert sorted(app._registry.queues()) == ["django.default", "django.emails"]


def test_a_view_enqueues_in_the_request_transaction(backend: ConveyorBackend) -> None:
    client = Client()
    refused = client.post("/signup", {"email": "x@y.z", "fail": "1"})
    assert refused.status_code == 400
    accepted = client.post("/signup", {"email": "a@b.c"})
    assert accepted.status_code == 202
    task_id = accepted.json()["task"]
    assert client.get(f"/tasks/{task_id}").json() == {"status": "READY"}
    work()
    done = client.get(f"/tasks/{task_id}").json()
    assert done["status"] == "SUCCESSFUL" and done["result"]["to"] == "a@b.c"
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(refused.json()["task"])


OWN_APP = Conveyor("postgresql://postgres@127.0.0.1:5432/test", schema="own_app")


def test_an_app_of_your_own_or_a_dsn_can_be_named(backend: ConveyorBackend) -> None:
    own = ConveyorBackend(
        "own",
        {"QUEUES": ["default"], "OPTIONS": {"app": f"{__name__}.OWN_APP", "queue_prefix": "dj:"}},
    )
    assert own.app is OWN_APP
    assert OWN_APP._registry.queues() == ["dj:default"]
    dsn = ConveyorBackend("dsn", {"OPTIONS": {"dsn": "postgresql://u@h/db", "schema": "s"}})
    assert (dsn.app.settings.dsn, dsn.app.schema) == ("postgresql://u@h/db", "s")
    with pytest.raises(ImproperlyConfigured, match="not a Conveyor app"):
        _ = ConveyorBackend("bad", {"OPTIONS": {"app": "mysite.tasks.add"}}).app
