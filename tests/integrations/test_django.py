"""The Django task backend against the real database: Django's API enqueues inside Django's own
transaction, Conveyor's worker runs the task, and ``get_result`` reads it back.

Runs on whichever task framework is installed: ``django.tasks`` (Django 6) or the
``django-tasks`` package; CI runs it on both (see ``.ci/run``)."""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import django
import pytest
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connections, transaction
from django.test import Client, override_settings
from django.utils import timezone

from conveyor import Conveyor, JobNotFound
from conveyor.cli import load_app
from conveyor.integrations.django import ConveyorBackend
from conveyor.integrations.django import backend as backend_module
from conveyor.integrations.django.framework import (
    FRAMEWORK,
    InvalidTask,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
    task_finished,
)
from conveyor.models import JobState

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_project"


@pytest.fixture
def tasks_settings(
    conveyor_dsn: str, conveyor_schema: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """The example project's TASKS on this test's schema, and a second backend, ``other``,
    storing its tasks in the same schema under another queue prefix."""
    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))  # kept: the worker imports tasks by module path
    if not apps.ready:
        monkeypatch.setenv("CONVEYOR_DATABASE_URL", conveyor_dsn)
        monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "mysite.settings")
        django.setup()
    from django.conf import settings

    tasks = copy.deepcopy(settings.TASKS)
    tasks["default"]["OPTIONS"]["schema"] = conveyor_schema
    tasks["other"] = {
        "BACKEND": "conveyor.integrations.django.ConveyorBackend",
        "QUEUES": ["default"],
        "OPTIONS": {"schema": conveyor_schema, "queue_prefix": "other."},
    }
    yield tasks
    connections.close_all()
    # The backend shares one app per backend, database and schema for the life of the
    # process; a test ends them, so the next test (and the leak guard) starts from nothing.
    with backend_module._apps_lock:
        shared, backend_module._apps = list(backend_module._apps.values()), {}
    for app in shared:
        app.close()


@pytest.fixture
def backend(tasks_settings: dict[str, Any]) -> Iterator[ConveyorBackend]:
    """The example project's backend (``default``), on this test's schema."""
    with override_settings(TASKS=tasks_settings):
        found = task_backends["default"]
        assert isinstance(found, ConveyorBackend)
        yield found


def changed(tasks: dict[str, Any], alias: str = "default", **params: Any) -> dict[str, Any]:
    """TASKS with some of the backend ``alias``'s parameters replaced (``OPTIONS`` merged)."""
    tasks = copy.deepcopy(tasks)
    options = params.pop("OPTIONS", {})
    tasks[alias].update(params)
    tasks[alias].setdefault("OPTIONS", {}).update(options)
    return tasks


def work(*args: str) -> None:
    call_command("conveyor_worker", "--burst", *args)


def test_the_framework_is_django_s_own_from_django_6_on() -> None:
    expected = "django.tasks" if django.VERSION >= (6,) else "django_tasks"
    assert expected == FRAMEWORK


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
    anywhere = {"QUEUES": [], "OPTIONS": {"queue_prefix": ""}}
    assert [m.id for m in ConveyorBackend("anywhere", anywhere).check()] == ["conveyor.E003"]
    no_app = ConveyorBackend("no_app", {"OPTIONS": {"app": "mysite.tasks.add"}})
    assert [m.id for m in no_app.check()] == ["conveyor.E007"]
    with pytest.raises(ImproperlyConfigured, match="unknown OPTIONS"):
        ConveyorBackend("typo", {"OPTIONS": {"shcema": "x"}})


def test_the_cli_loads_the_worker_app(backend: ConveyorBackend) -> None:
    app = load_app("conveyor.integrations.django:app")
    assert isinstance(app, Conveyor) and app is backend.app
    assert app.schema == backend.app.schema
    assert sorted(app._registry.queues()) == ["django.default", "django.emails"]
    other = task_backends["other"]
    assert isinstance(other, ConveyorBackend)
    assert other.app is not app and other.app._registry.queues() == ["other.default"]


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


# -- issue 18: the django.tasks contract ------------------------------------------------------


def test_enqueue_reports_what_get_result_reports(backend: ConveyorBackend) -> None:
    from mysite.tasks import add

    result = add.enqueue(1, 2)
    assert result == backend.get_result(result.id)
    enqueued_at = result.enqueued_at
    result.refresh()
    assert result.enqueued_at == enqueued_at
    assert result.enqueued_at == backend.app.get_job(result.id).created_at  # the database's


def test_a_return_value_json_cannot_hold_fails_the_task_at_once_with_its_type_error(
    tasks_settings: dict[str, Any],
) -> None:
    retrying = changed(tasks_settings, OPTIONS={"job_options": {"retry_limit": 3}})
    with override_settings(TASKS=retrying):
        from tests.integrations import django_sample_tasks as sample

        sample.runs.clear()
        result = sample.returns_a_set.enqueue()
        work()
        failed = sample.returns_a_set.get_result(result.id)
        job = task_backends["default"].app.get_job(result.id)
    assert failed.status == TaskResultStatus.FAILED
    assert [e.exception_class for e in failed.errors] == [TypeError]
    assert "not JSON serializable" in failed.errors[0].traceback
    assert (job.state, job.attempt, sample.runs) == (JobState.FAILED, 1, ["returns_a_set"])


def test_an_unknown_backend_or_queue_is_a_command_error(backend: ConveyorBackend) -> None:
    with pytest.raises(CommandError, match="nope"):
        call_command("conveyor_worker", "--backend", "nope", "--burst")
    with pytest.raises(CommandError, match="has no queue 'nope'"):
        call_command("conveyor_worker", "--queues", "default,nope", "--burst")


def test_empty_queues_mean_any_queue(tasks_settings: dict[str, Any]) -> None:
    from mysite.tasks import add

    with override_settings(TASKS=changed(tasks_settings, QUEUES=[])):
        anywhere = task_backends["default"]
        assert isinstance(anywhere, ConveyorBackend)
        assert list(anywhere.check()) == []
        result = add.using(queue_name="anything-goes").enqueue(3, 4)
        assert anywhere.app.get_job(result.id).queue == "django.anything-goes"
        with pytest.raises(InvalidTask):
            add.using(queue_name="no spaces").enqueue(1, 1)
        # A worker with no --queues serves the backend's queues in use when it starts.
        assert (
            "django.anything-goes"
            in load_app("conveyor.integrations.django:app")._registry.queues()
        )
        work()
        assert add.get_result(result.id).return_value == 7


def test_get_result_inside_the_enqueuing_transaction(backend: ConveyorBackend) -> None:
    from mysite.tasks import add

    with pytest.raises(RuntimeError), transaction.atomic():
        result = add.enqueue(5, 6)
        assert backend.get_result(result.id) == result
        assert add.get_result(result.id).args == [5, 6]
        result.refresh()
        assert result.status == TaskResultStatus.READY
        raise RuntimeError("roll back")
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(result.id)


def test_a_worker_runs_only_its_own_backends_tasks(backend: ConveyorBackend) -> None:
    from mysite.tasks import add

    mine = add.enqueue(1, 1)
    theirs = add.using(backend="other").enqueue(2, 2)
    assert backend.app.get_job(theirs.id).queue == "other.default"
    work()  # the default backend's worker
    assert add.get_result(mine.id).status == TaskResultStatus.SUCCESSFUL
    assert add.using(backend="other").get_result(theirs.id).status == TaskResultStatus.READY
    work("--backend", "other")
    assert add.using(backend="other").get_result(theirs.id).return_value == 4


def test_backends_storing_tasks_in_the_same_queues_fail_the_check(
    tasks_settings: dict[str, Any],
) -> None:
    clashing = changed(tasks_settings, "other", OPTIONS={"queue_prefix": "django."})
    with override_settings(TASKS=clashing):
        messages = list(task_backends["default"].check())
        assert [m.id for m in messages] == ["conveyor.E006"]
        assert "'other'" in messages[0].msg and "django.default" in messages[0].msg
    anywhere = changed(tasks_settings, "other", QUEUES=[], OPTIONS={"queue_prefix": "django."})
    with override_settings(TASKS=anywhere):
        assert [m.id for m in task_backends["other"].check()] == ["conveyor.E006"]
    with override_settings(TASKS=tasks_settings):  # another prefix: no clash
        assert list(task_backends["default"].check()) == []
        assert list(task_backends["other"].check()) == []


def test_a_queue_s_retries_map_onto_ready_then_failed(tasks_settings: dict[str, Any]) -> None:
    from mysite.tasks import explode

    finished: list[str] = []

    def on_finished(sender: object, task_result: Any, **kwargs: Any) -> None:
        finished.append(task_result.status)

    hourly = {"job_options": {"retry_limit": 1, "retry_delay": 3600}}
    later = changed(tasks_settings, OPTIONS=hourly)
    with override_settings(TASKS=later):
        task_finished.connect(on_finished)
        try:
            waiting = explode.enqueue()
            work()
        finally:
            task_finished.disconnect(on_finished)
        retrying = explode.get_result(waiting.id)
    # A failed attempt with attempts left: ready again, its error kept; the signal said FAILED.
    assert (retrying.status, retrying.attempts, len(retrying.errors)) == ("READY", 1, 1)
    assert finished == ["FAILED"]

    now = changed(tasks_settings, OPTIONS={"job_options": {"retry_limit": 1, "retry_delay": 0}})
    with override_settings(TASKS=now):
        result = explode.enqueue()
        work()
        failed = explode.get_result(result.id)
    assert (failed.status, failed.attempts) == ("FAILED", 2)
    assert [e.exception_class for e in failed.errors] == [ValueError, ValueError]


def test_a_cancelled_task_is_failed(backend: ConveyorBackend) -> None:
    from mysite.tasks import add

    result = add.enqueue(1, 2)
    backend.app.cancel(result.id)
    cancelled = add.get_result(result.id)
    assert cancelled.status == TaskResultStatus.FAILED and cancelled.errors == []


def test_a_job_of_another_backend_in_a_workers_queue_fails_naming_both(
    backend: ConveyorBackend,
) -> None:
    # What a clash the system check reports would do: never run by the wrong backend.
    stray = backend.app.send(
        "django.default",
        {"task": "mysite.tasks.add", "args": [1, 1], "kwargs": {}, "backend": "other",
         "queue_name": "default", "run_after": None},
    )  # fmt: skip
    work()
    job = backend.app.get_job(stray)
    assert job.state is JobState.FAILED
    assert "a task of backend 'other', not of 'default'" in job.errors[-1]["message"]


def test_a_handler_completes_its_job_in_djangos_transaction(backend: ConveyorBackend) -> None:
    from django.db import connection

    from conveyor import Job
    from conveyor.integrations.django import complete

    app = backend.app
    schema = app.schema
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE TABLE "{schema}".invoices (attempt int)')

    @app.job("django.invoice", retry_limit=1, retry_delay=0)
    def invoice(job: Job) -> None:
        try:
            with transaction.atomic():
                with connections["default"].cursor() as cursor:
                    cursor.execute(f'INSERT INTO "{schema}".invoices VALUES (%s)', [job.attempt])
                app.send("django.mail", {}, connection=connections["default"].connection)
                complete(job, result={"attempt": job.attempt})
                if job.attempt == 1:
                    raise RuntimeError("roll back the first attempt")
        finally:
            connections.close_all()

    try:
        job_id = app.send("django.invoice", {})
        assert app.drain(["django.invoice"]) == 2
        done = app.get_job(job_id)
        assert (done.state, done.attempt, done.result) == (
            JobState.COMPLETED, 2, {"attempt": 2}
        )  # fmt: skip
        assert [e["type"] for e in done.errors] == ["RuntimeError"]
        assert [j.state for j in app.list_jobs(queue="django.mail")] == [JobState.CREATED]
        with connection.cursor() as cursor:
            cursor.execute(f'SELECT array_agg(attempt) FROM "{schema}".invoices')
            assert cursor.fetchone()[0] == [2]
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP TABLE "{schema}".invoices')
