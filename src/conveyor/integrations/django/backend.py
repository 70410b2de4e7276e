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

``QUEUES: []`` means any queue, as in Django. Each backend has its own Conveyor app, so its worker
serves its queues only; two backends storing tasks in the same queues of one schema fail the
system check ``conveyor.E006``. docs/howto/django.md says which parts of Django's contract hold.
"""

from __future__ import annotations

import builtins
import json
import re
import threading
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from django.conf import settings as django_settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connections
from django.utils import timezone
from django.utils.module_loading import import_string

from conveyor.app import Conveyor
from conveyor.config import DEFAULT_SCHEMA
from conveyor.errors import Fail, InvalidOption, JobNotFound, ValidationError
from conveyor.handlers import HandlerFunc, Registry
from conveyor.integrations.django.framework import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from conveyor.models import Job, JobState
from conveyor.options import check_queue_name

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
# shared by the threads of one backend alias, so worker threads do not each open a connection
# pool, and one backend's worker serves only that backend's queues. The handler of an alias is
# one function, so the registry tells it from another alias's handler on a shared app.
_apps: dict[tuple[str, str, str], Conveyor] = {}
_handlers: dict[str, HandlerFunc] = {}
_apps_lock = threading.Lock()
_DOTTED = re.compile(r"[A-Za-z_][\w.]*")
_CAUSE = "\n\nThe above exception was the direct cause of the following exception:\n"


class ConveyorBackend(BaseTaskBackend):
    """Stores Django tasks as Conveyor jobs, one Conveyor queue per Django queue.

    ``enqueue`` writes on Django's own connection, so it joins the open transaction;
    ``get_result`` reads the job back as a ``TaskResult`` (on Django's connection while it is in
    a transaction, so a task enqueued there can be read back before the commit). The worker is
    Conveyor's: ``python manage.py conveyor_worker`` (with ``conveyor.integrations.django`` in
    ``INSTALLED_APPS``) or ``conveyor worker conveyor.integrations.django:app``.
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

    @property
    def any_queue(self) -> bool:
        """``QUEUES: []``: tasks may name any queue (Django's meaning of an empty list)."""
        return not self.queues

    def conveyor_queue(self, queue_name: str) -> str:
        """The Conveyor queue that holds the tasks of the Django queue ``queue_name``."""
        return self.queue_prefix + queue_name

    @property
    def app(self) -> Conveyor:
        """The Conveyor app of this backend, with a handler for each of its queues."""
        if self._app is None:
            app = _shared_app(self.alias, self._app_path, self._dsn, self._schema, self.database)
            self._serve(app, self.queues)
            self._app = app
        return self._app

    def worker_queues(self, queue_names: Sequence[str] | None = None) -> list[str]:
        """The Conveyor queues a worker of this backend serves, each with its handler.

        ``queue_names`` (Django queue names) must be among ``QUEUES``; by default, all of them.
        With ``QUEUES: []`` any name goes, and the default is every queue of this backend that
        exists when the worker starts (a queue exists from its first task on), and ``default``.
        :class:`ImproperlyConfigured` for a queue that is not the backend's.
        """
        if queue_names is not None:
            names = set(queue_names)
            foreign = sorted(names - self.queues) if not self.any_queue else []
            if foreign:
                raise ImproperlyConfigured(
                    f"TASKS[{self.alias!r}] has no queue {', '.join(map(repr, foreign))}; "
                    f"its QUEUES: {', '.join(sorted(self.queues))}"
                )
        elif self.any_queue:
            prefix = self.queue_prefix
            names = {"default"} | {
                q.name[len(prefix) :]
                for q in self.app.list_queues()
                if q.name.startswith(prefix)
                and _handled_by(self.app, q.name) in (None, _handler(self.alias))
            }
        else:
            names = set(self.queues)
        for name in names:
            try:
                check_queue_name(self.conveyor_queue(name))
            except ValidationError as exc:
                raise ImproperlyConfigured(f"TASKS[{self.alias!r}]: {exc}") from None
        self._serve(self.app, names)
        return sorted(self.conveyor_queue(name) for name in names)

    def validate_task(self, task: Task[Any, Any]) -> None:
        """Django's rules, and a queue name Conveyor can store (any name goes with
        ``QUEUES: []``): :class:`InvalidTask` otherwise."""
        super().validate_task(task)
        try:
            check_queue_name(self.conveyor_queue(task.queue_name))
        except ValidationError as exc:
            raise InvalidTask(str(exc)) from None

    def enqueue(self, task: Task[Any, Any], args: Any, kwargs: Any) -> TaskResult[Any]:
        """Store the task as a job on Django's connection (inside its open transaction)."""
        self.validate_task(task)
        run_after = task.run_after
        if run_after is not None and timezone.is_naive(run_after):
            # With USE_TZ = False Django allows naive times; Conveyor needs to know the zone.
            run_after = timezone.make_aware(run_after)
        # Built first: it normalizes the arguments to JSON, refusing others before any write.
        normalized: TaskResult[Any] = TaskResult(
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
            "args": normalized.args,
            "kwargs": normalized.kwargs,
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
        # Read back, so the result holds what get_result will report (the database's clock for
        # enqueued_at), and compares equal to it.
        result = self.result_of(self.app.get_job(job_id, connection=connection.connection))
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult[Any]:
        """The task result stored under ``result_id`` (a job id), as it is now."""
        connection = connections[self.database]
        # Inside a transaction, read on its connection: a task enqueued there is not visible
        # to any other connection before the commit.
        own = connection.connection if connection.in_atomic_block else None
        try:
            job = self.app.get_job(result_id, connection=own)
        except (JobNotFound, InvalidOption):
            raise TaskResultDoesNotExist(result_id) from None
        if not self._owns(job):
            raise TaskResultDoesNotExist(result_id)
        return self.result_of(job)

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        """Django system checks: the database, the queues, the job options, and other
        Conveyor task backends storing tasks in the same queues."""
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
        if self.any_queue and not self.queue_prefix:
            yield checks.Error(
                f"{where}: QUEUES: [] (any queue) needs a queue_prefix, so that its worker "
                "tells the backend's queues from other queues of the schema",
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
        try:
            yield from self._check_collisions(where)
        except (ImproperlyConfigured, ImportError, KeyError) as exc:
            # Without a database entry (E001) there is nothing to compare; a bad app path
            # has no other check.
            if self._app_path is not None:
                yield checks.Error(f"{where}: OPTIONS['app']: {exc}", id="conveyor.E007")

    def _check_collisions(self, where: str) -> Iterable[checks.CheckMessage]:
        here = self._location()
        for other in task_backends.all():
            if other.alias == self.alias or not isinstance(other, ConveyorBackend):
                continue
            try:
                there = other._location()
            except (ImproperlyConfigured, ImportError, KeyError):
                continue  # a backend that cannot say where it stores has errors of its own
            if there == here:
                shared = self._shared_queues(other)
                if shared:
                    yield checks.Error(
                        f"{where} and TASKS[{other.alias!r}] store tasks in the same Conveyor "
                        f"queue(s) of schema {here[1]!r}: {shared}; each backend's worker "
                        "would run the other's tasks",
                        hint="Give one of them another queue_prefix or schema.",
                        id="conveyor.E006",
                    )

    def _location(self) -> tuple[str, str]:
        """Where this backend's jobs live: the database (as connected to) and the schema."""
        if self._app_path is not None:
            app = _import_app(self._app_path)
            return (app.settings.dsn or "", app.schema)
        return (self._dsn or _django_dsn(self.database), self._schema)

    def _shared_queues(self, other: ConveyorBackend) -> str:
        """The queues both backends may store tasks in, described; empty when none."""
        if self.any_queue and other.any_queue:
            longer = max(self.queue_prefix, other.queue_prefix, key=len)
            shorter = min(self.queue_prefix, other.queue_prefix, key=len)
            return f"any queue starting with {longer!r}" if longer.startswith(shorter) else ""
        if self.any_queue or other.any_queue:
            anyq, named = (self, other) if self.any_queue else (other, self)
            names = {named.conveyor_queue(q) for q in named.queues}
            return ", ".join(sorted(n for n in names if n.startswith(anyq.queue_prefix)))
        mine = {self.conveyor_queue(q) for q in self.queues}
        theirs = {other.conveyor_queue(q) for q in other.queues}
        return ", ".join(sorted(mine & theirs))

    def _serve(self, app: Conveyor, queue_names: Iterable[str]) -> None:
        handler = _handler(self.alias)
        for queue_name in sorted(queue_names):
            queue = self.conveyor_queue(queue_name)
            if _handled_by(app, queue) not in (None, handler):
                raise ImproperlyConfigured(
                    f"TASKS[{self.alias!r}]: Conveyor queue {queue!r} of schema {app.schema!r} "
                    "already has a handler (another task backend's, or the app's own); give "
                    "the backend another queue_prefix"
                )
            try:
                app.job(queue, handler, **self.job_options)
            except ValidationError as exc:
                raise ImproperlyConfigured(f"TASKS[{self.alias!r}]: {exc}") from None

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
    """Run the Django task of a job, on the Conveyor task backend named in it.

    It runs in a worker thread (Conveyor runs plain ``def`` handlers there); async tasks run in
    an event loop of that thread. Django connections of the thread are closed around the call
    when they are too old or broken, as Django does around a request. A return value that JSON
    cannot hold fails the task at once, with the serialiser's error: running it again cannot
    help.
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
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise Fail(f"the task's return value cannot be stored as JSON: {exc}") from exc
    except BaseException as exc:
        error = TaskError(exception_class_path=_raised_path(exc), traceback=_format(exc))
        failed = replace(running, status=FAILED, errors=[*running.errors, error])
        task_finished.send(type(backend), task_result=failed)
        raise
    finally:
        close_old_connections()
    done = replace(running, status=SUCCESSFUL, finished_at=timezone.now())
    object.__setattr__(done, "_return_value", value)
    task_finished.send(type(backend), task_result=done)
    return value


def complete(job: Job, result: Any = None, *, using: str = "default") -> None:
    """Inside a running handler: complete ``job`` in the open transaction of Django's
    connection ``using`` (``transaction.atomic()``), with ``result``. The job is completed if
    and only if that transaction commits, before the handler returns; outside an atomic block
    the completion commits at once. See :meth:`Job.complete_in <conveyor.Job.complete_in>`."""
    connection = connections[using]
    connection.ensure_connection()
    job.complete_in(connection.connection, result)


def _handler(alias: str) -> HandlerFunc:
    """The Conveyor handler of the queues of the task backend ``alias``: it runs only that
    backend's tasks (a job of another backend in its queue fails, saying so)."""
    with _apps_lock:
        found = _handlers.get(alias)
        if found is None:

            def handler(job: Job) -> Any:
                data = job.data
                named = data.get("backend") if isinstance(data, dict) else None
                if named != alias:
                    raise Fail(
                        f"job {job.id} in queue {job.queue!r} is a task of backend {named!r}, "
                        f"not of {alias!r}, whose worker took it: two backends share the "
                        "queue (see the system check conveyor.E006)"
                    )
                return run_task(job)

            found = _handlers[alias] = handler
        return found


def _handled_by(app: Conveyor, queue: str) -> HandlerFunc | None:
    found = app._registry.get(queue)
    return found.func if found is not None else None


def backend_for(alias: str = "default") -> ConveyorBackend:
    """The task backend ``alias``, which must be a :class:`ConveyorBackend`; sets Django up first
    (``DJANGO_SETTINGS_MODULE`` must be set) when nothing did yet.

    :class:`~django.core.exceptions.ImproperlyConfigured` if there is no such backend or it is
    not a Conveyor one.
    """
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
    ``conveyor worker conveyor.integrations.django:app`` loads. Its handlers are those of this
    backend's queues (and, with ``OPTIONS['app']``, that app's own); with ``QUEUES: []``,
    those of :meth:`ConveyorBackend.worker_queues`, looked up now."""
    backend = backend_for(alias)
    if backend.any_queue:
        backend.worker_queues()
    return backend.app


def _shared_app(
    alias: str, path: str | None, dsn: str | None, schema: str, database: str
) -> Conveyor:
    if path is not None:
        return _import_app(path)
    resolved = dsn or _django_dsn(database)
    with _apps_lock:
        app = _apps.get((alias, resolved, schema))
        if app is None:
            app = _apps[(alias, resolved, schema)] = Conveyor(resolved, schema=schema)
        return app


def _import_app(path: str) -> Conveyor:
    found = import_string(path.replace(":", "."))
    if not isinstance(found, Conveyor):
        raise ImproperlyConfigured(f"OPTIONS['app'] {path!r} is not a Conveyor app")
    return found


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


def _raised_path(exc: BaseException) -> str:
    """The dotted class path of an exception a task raised; for Conveyor's :class:`Fail` raised
    from another exception (how a task is failed at once), that exception's."""
    if isinstance(exc, Fail) and exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def _exception_path(error: dict[str, Any]) -> str:
    """The dotted class path of a stored error, for ``TaskError.exception_class``.

    Conveyor stores the class name; the last line of the traceback has the module-qualified
    name (bare for builtins), unless the traceback was cut. A :class:`Fail` raised from another
    exception reports that exception, the first of the chain.
    """
    trace = str(error.get("traceback") or "").rstrip()
    if error.get("type") == "Fail" and _CAUSE in trace:
        trace = trace.split(_CAUSE, 1)[0].rstrip()
    name = trace.rsplit("\n", 1)[-1].split(":", 1)[0].strip()
    if not _DOTTED.fullmatch(name):
        name = str(error.get("type") or "Exception")
    if "." not in name and isinstance(getattr(builtins, name, None), type):
        return f"builtins.{name}"
    return name


def _format(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
