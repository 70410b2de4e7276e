"""A backend for Django's task framework that stores tasks as Conveyor jobs and runs them.

Django 6 ships the framework as ``django.tasks``; before it, the ``django-tasks`` package is the
same API under ``django_tasks``. Either way::

    TASKS = {
        "default": {
            "BACKEND": "conveyor.integrations.django.ConveyorBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"schema": "conveyor", "job_options": {"retry_limit": 3}},
        }
    }

``OPTIONS`` (all optional):

- ``database``: the Django database alias whose connection ``enqueue`` writes on (default
  ``"default"``), so a task enqueued inside ``transaction.atomic()`` exists only if it commits.
  It must use the ``postgresql`` engine with psycopg 3.
- ``dsn``: where the worker and ``get_result`` connect; default: built from that database's
  ``NAME``, ``USER``, ``PASSWORD``, ``HOST`` and ``PORT``.
- ``schema``: Conveyor's schema (default ``"conveyor"``).
- ``app``: the dotted path of a :class:`~conveyor.Conveyor` app of your own (``"myproj.jobs.app"``)
  to use instead of building one from ``dsn`` and ``schema``: its other handlers then run in the
  same worker, and its clock and defaults apply.
- ``queue_prefix``: Conveyor's queue for the Django queue ``q`` is ``queue_prefix + q``
  (default ``"django."``).
- ``job_options``: Conveyor job options for every task (``retry_limit``, ``expire_in``, ...).
"""

from __future__ import annotations

import builtins
import re
import threading
import traceback
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connections
from django.utils import timezone
from django.utils.module_loading import import_string

from conveyor.app import Conveyor
from conveyor.config import DEFAULT_SCHEMA
from conveyor.errors import Fail, InvalidOption, JobNotFound, ValidationError
from conveyor.handlers import Registry
from conveyor.models import Job, JobState
from conveyor.options import check_queue_name

if TYPE_CHECKING:
    from django_tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
else:
    try:
        from django.tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
        from django.tasks.backends.base import BaseTaskBackend
        from django.tasks.base import Task, TaskError
        from django.tasks.exceptions import TaskResultDoesNotExist
        from django.tasks.signals import task_enqueued, task_finished, task_started
    except ImportError:
        from django_tasks import TaskContext, TaskResult, TaskResultStatus, task_backends
        from django_tasks.backends.base import BaseTaskBackend
        from django_tasks.base import Task, TaskError
        from django_tasks.exceptions import TaskResultDoesNotExist
        from django_tasks.signals import task_enqueued, task_finished, task_started

OPTION_NAMES = frozenset({"database", "dsn", "schema", "app", "queue_prefix", "job_options"})

# Looked up by value: without Django's type hints, mypy reads the members as their tuples.
READY = TaskResultStatus("READY")
RUNNING = TaskResultStatus("RUNNING")
SUCCESSFUL = TaskResultStatus("SUCCESSFUL")
FAILED = TaskResultStatus("FAILED")
STATUS = {
    JobState.WAITING: READY,
    JobState.CREATED: READY,
    JobState.RETRY: READY,
    JobState.ACTIVE: RUNNING,
    JobState.COMPLETED: SUCCESSFUL,
    JobState.FAILED: FAILED,
    JobState.CANCELLED: FAILED,
}

# Backends are built once per thread (Django's rule for connections); the apps they build are
# shared, so worker threads do not each open a connection pool.
_apps: dict[tuple[str, str], Conveyor] = {}
_apps_lock = threading.Lock()
_DOTTED = re.compile(r"[A-Za-z_][\w.]*")


class ConveyorBackend(BaseTaskBackend):
    """Stores Django tasks as Conveyor jobs, one Conveyor queue per Django queue.

    ``enqueue`` writes on Django's own connection, so it joins the open transaction;
    ``get_result`` reads the job back as a ``TaskResult``. The worker is Conveyor's:
    ``conveyor worker conveyor.integrations.django:app`` or ``python manage.py conveyor_worker``
    (with ``conveyor.integrations.django`` in ``INSTALLED_APPS``).
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = dict(self.options)
        unknown = sorted(set(options) - OPTION_NAMES)
        if unknown:
            raise ImproperlyConfigured(
                f"unknown OPTIONS of task backend {alias!r}: {', '.join(unknown)}; "
                f"known: {', '.join(sorted(OPTION_NAMES))}"
            )
        self.database: str = options.get("database", "default")
        self.queue_prefix: str = options.get("queue_prefix", "django.")
        self.job_options: dict[str, Any] = dict(options.get("job_options", {}))
        self._app_path: str | None = options.get("app")
        self._dsn: str | None = options.get("dsn")
        self._schema: str = options.get("schema", DEFAULT_SCHEMA)
        self._app: Conveyor | None = None

    def conveyor_queue(self, queue_name: str) -> str:
        """The Conveyor queue that holds the tasks of the Django queue ``queue_name``."""
        return self.queue_prefix + queue_name

    @property
    def app(self) -> Conveyor:
        """The Conveyor app of this backend, with a handler for each of its queues."""
        if self._app is None:
            app = _shared_app(self._app_path, self._dsn, self._schema, self.database)
            for queue_name in sorted(self.queues):
                app.job(self.conveyor_queue(queue_name), run_task, **self.job_options)
            self._app = app
        return self._app

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        """Store the task as a job on Django's connection (inside its open transaction)."""
        self.validate_task(task)
        run_after = task.run_after
        if run_after is not None and timezone.is_naive(run_after):
            # With USE_TZ = False Django allows naive times; Conveyor needs to know the zone.
            run_after = timezone.make_aware(run_after)
        # Built first: it normalizes the arguments to JSON, refusing others before any write.
        result: TaskResult[Any] = TaskResult(
            task=task,
            id="",
            status=READY,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        data = {
            "task": task.module_path,
            "args": result.args,
            "kwargs": result.kwargs,
            "backend": self.alias,
            "queue_name": task.queue_name,
            "run_after": run_after.isoformat() if run_after is not None else None,
        }
        options: dict[str, Any] = {"priority": task.priority}
        if run_after is not None:
            options["start_after"] = run_after
        connection = connections[self.database]
        connection.ensure_connection()
        job_id = self.app.send(
            self.conveyor_queue(task.queue_name),
            data,
            connection=connection.connection,
            **options,
        )
        result = replace(result, id=str(job_id), enqueued_at=timezone.now())
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The task result stored under ``result_id`` (a job id), as it is now."""
        try:
            job = self.app.get_job(result_id)
        except (JobNotFound, InvalidOption):
            raise TaskResultDoesNotExist(result_id) from None
        if not self._owns(job):
            raise TaskResultDoesNotExist(result_id)
        return self.result_of(job)

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        """Django system checks: the database, the queues and the job options."""
        yield from super().check(**kwargs)
        where = f"TASKS[{self.alias!r}]"
        database = django_settings.DATABASES.get(self.database)
        if database is None:
            yield checks.Error(
                f"{where}: OPTIONS['database'] names {self.database!r}, not in DATABASES",
                id="conveyor.E001",
            )
        elif connections[self.database].vendor != "postgresql":
            yield checks.Error(
                f"{where}: database {self.database!r} must use the postgresql engine "
                "(with psycopg 3)",
                id="conveyor.E002",
            )
        if not self.queues:
            yield checks.Error(
                f"{where}: QUEUES must list the queues, so the worker knows what to serve",
                id="conveyor.E003",
            )
        for queue_name in sorted(self.queues):
            try:
                check_queue_name(self.conveyor_queue(queue_name))
            except ValidationError as exc:
                yield checks.Error(f"{where}: {exc}", id="conveyor.E004")
        try:
            Registry().register("check", run_task, **self.job_options)
        except ValidationError as exc:
            yield checks.Error(f"{where}: job_options: {exc}", id="conveyor.E005")

    # -- reading jobs back as task results -------------------------------------------------

    def _owns(self, job: Job) -> bool:
        data = job.data
        return (
            isinstance(data, dict)
            and data.get("backend") == self.alias
            and isinstance(data.get("task"), str)
            and job.queue == self.conveyor_queue(str(data.get("queue_name")))
        )

    def task_of(self, job: Job) -> Task[Any, Any]:
        """The Django task a job runs, with the options it was enqueued with."""
        data = job.data
        found = import_string(data["task"])
        if not isinstance(found, Task):
            raise TypeError(f"{data['task']} is not a Django task")
        run_after = data.get("run_after")
        return replace(
            found,
            backend=self.alias,
            queue_name=data["queue_name"],
            priority=job.priority,
            run_after=datetime.fromisoformat(run_after) if run_after else None,
        )

    def result_of(self, job: Job, task: Task[Any, Any] | None = None) -> TaskResult[Any]:
        """A job as a Django ``TaskResult``."""
        data = job.data
        workers = [str(e["worker"]) for e in job.errors if e.get("worker")]
        if job.worker_id is not None and job.state in (JobState.ACTIVE, JobState.COMPLETED):
            workers.append(str(job.worker_id))
        result: TaskResult[Any] = TaskResult(
            task=task or self.task_of(job),
            id=str(job.id),
            status=STATUS[job.state],
            enqueued_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            last_attempted_at=job.started_at,
            args=data.get("args", []),
            kwargs=data.get("kwargs", {}),
            backend=self.alias,
            errors=[
                TaskError(
                    exception_class_path=_exception_path(e),
                    traceback=e.get("traceback") or e.get("message") or "",
                )
                for e in job.errors
            ],
            worker_ids=workers,
        )
        if job.state is JobState.COMPLETED:
            object.__setattr__(result, "_return_value", job.result)
        return result


def run_task(job: Job) -> Any:
    """The Conveyor handler of every Django queue: import the task and call it.

    It runs in a worker thread (Conveyor runs plain ``def`` handlers there); async tasks run in
    an event loop of that thread. Django connections of the thread are closed around the call
    when they are too old or broken, as Django does around a request.
    """
    alias = job.data.get("backend") if isinstance(job.data, dict) else None
    backend = task_backends[alias] if isinstance(alias, str) else None
    if not isinstance(backend, ConveyorBackend) or not backend._owns(job):
        raise Fail(f"job {job.id} is not a Django task of a Conveyor task backend")
    task = backend.task_of(job)
    running = backend.result_of(job, task)
    task_started.send(type(backend), task_result=running)
    close_old_connections()
    try:
        if task.takes_context:
            value = task.call(TaskContext(task_result=running), *running.args, **running.kwargs)
        else:
            value = task.call(*running.args, **running.kwargs)
    except BaseException as exc:
        error = TaskError(
            exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
            traceback=_format(exc),
        )
        failed = replace(running, status=FAILED, errors=[*running.errors, error])
        task_finished.send(type(backend), task_result=failed)
        raise
    finally:
        close_old_connections()
    done = replace(running, status=SUCCESSFUL, finished_at=timezone.now())
    object.__setattr__(done, "_return_value", value)
    task_finished.send(type(backend), task_result=done)
    return value


def backend_for(alias: str = "default") -> ConveyorBackend:
    """The task backend ``alias``, which must be a :class:`ConveyorBackend`; sets Django up first
    (``DJANGO_SETTINGS_MODULE`` must be set) when nothing did yet."""
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    backend = task_backends[alias]
    if not isinstance(backend, ConveyorBackend):
        raise ImproperlyConfigured(f"TASKS[{alias!r}] is not a ConveyorBackend")
    return backend


def worker_app(alias: str = "default") -> Conveyor:
    """The Conveyor app that runs the tasks of the task backend ``alias``; what
    ``conveyor worker conveyor.integrations.django:app`` loads."""
    return backend_for(alias).app


def _shared_app(path: str | None, dsn: str | None, schema: str, database: str) -> Conveyor:
    if path is not None:
        found = import_string(path.replace(":", "."))
        if not isinstance(found, Conveyor):
            raise ImproperlyConfigured(f"OPTIONS['app'] {path!r} is not a Conveyor app")
        return found
    resolved = dsn or _django_dsn(database)
    with _apps_lock:
        app = _apps.get((resolved, schema))
        if app is None:
            app = _apps[(resolved, schema)] = Conveyor(resolved, schema=schema)
        return app


def _django_dsn(database: str) -> str:
    """A libpq connection string for a Django database entry."""
    entry = django_settings.DATABASES[database]
    parts = {
        "dbname": entry.get("NAME"),
        "user": entry.get("USER"),
        "password": entry.get("PASSWORD"),
        "host": entry.get("HOST"),
        "port": entry.get("PORT"),
    }
    return " ".join(f"{key}={_quoted(str(value))}" for key, value in parts.items() if value)


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def _exception_path(error: dict[str, Any]) -> str:
    """The dotted class path of a stored error, for ``TaskError.exception_class``.

    Conveyor stores the class name; the last line of the traceback has the module-qualified
    name (bare for builtins), unless the traceback was cut.
    """
    trace = str(error.get("traceback") or "").rstrip()
    name = trace.rsplit("\n", 1)[-1].split(":", 1)[0].strip()
    if not _DOTTED.fullmatch(name):
        name = str(error.get("type") or "Exception")
    if "." not in name and isinstance(getattr(builtins, name, None), type):
        return f"builtins.{name}"
    return name


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
