"""The worker's log lines, and the formats the command line writes them in.

A worker writes, with the standard :mod:`logging` module:

- ``conveyor.worker``: a line when it starts (version, schema, queues, concurrency, database
  host and port, never the credentials) and when it stops (attempts run), beside the lines
  about signals and shutdown;
- ``conveyor.job``: a line per failed attempt (WARNING), per retry (INFO) and per job that
  failed for good, into the dead letters (ERROR), with the job's id, queue, attempt and the
  error's type and message; at DEBUG also a line per attempt started, completed or snoozed.

The job lines come from listeners of the app's events, subscribed when a worker starts: a job
that succeeds costs nothing more unless DEBUG is on. Every line carries its fields as ``extra``
attributes, so any formatter can use them, and its message is a whole sentence for formatters
that print only the message. :func:`configure_logging` sets up ``logfmt`` (``key=value``, the
default of ``conveyor worker``) or ``json``, one line per record; these print the fields, with
the line's short name (its ``_summary``, "attempt failed") as ``msg`` instead of the sentence.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import socket
import sys
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import metadata
from typing import IO, TYPE_CHECKING, Any
from uuid import UUID

from conveyor._store.conninfo import describe_dsn
from conveyor.events import Event, Events

if TYPE_CHECKING:
    from conveyor.worker.state import WorkerOptions

worker_log = logging.getLogger("conveyor.worker")
job_log = logging.getLogger("conveyor.job")

FORMATS = ("logfmt", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# An error message longer than this is cut in a log line; the whole text is stored on the job.
MAX_MESSAGE = 2000
# The attributes every LogRecord has; any other attribute came in through ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}

# -- formats ---------------------------------------------------------------------------------


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> Iterator[tuple[str, Any]]:
    """A record as ordered fields: time, level, logger, message, its extras, its exception."""
    at = datetime.fromtimestamp(record.created, UTC)
    yield "ts", at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    yield "level", record.levelname.lower()
    yield "logger", record.name
    yield "msg", getattr(record, "_summary", None) or record.getMessage()
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_") and value is not None:
            yield key, value
    if record.exc_info:
        yield "exc", formatter.formatException(record.exc_info)
    if record.stack_info:
        yield "stack", formatter.formatStack(record.stack_info)


def _logfmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple | set | frozenset):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    if text and not any(c in text for c in ' ="\\') and text.isprintable():
        return text
    return json.dumps(text, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    """``ts=… level=warning logger=conveyor.job msg="attempt failed" job_id=… queue=…``: one
    line per record; a value with spaces, quotes or line breaks is quoted and escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record, self))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line, with the same fields as :class:`LogfmtFormatter`."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(dict(_fields(record, self)), default=str, ensure_ascii=False)


class _QueueHandler(logging.handlers.QueueHandler):
    """Formats a record where it is logged and queues only the finished line, so the thread
    that writes it needs nothing of the record (its arguments, its exception) any more."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return logging.makeLogRecord(
            {"msg": self.format(record), "levelno": record.levelno, "name": record.name}
        )


_listener: logging.handlers.QueueListener | None = None


def configure_logging(
    level: str = "INFO", log_format: str = "logfmt", stream: IO[str] | None = None
) -> None:
    """Send every log record at ``level`` or above to ``stream`` (stderr) in ``log_format``
    (``logfmt`` or ``json``); called again, it replaces the handler it installed before.

    Lines are written by a thread of their own: a stream that blocks (a full pipe, a paused
    terminal, a log collector applying backpressure) delays the log, never the worker's event
    loop and its jobs. They are flushed when the process exits.
    """
    global _listener
    formatter: logging.Formatter = JsonFormatter() if log_format == "json" else LogfmtFormatter()
    writer = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler = _QueueHandler(queue.SimpleQueue())
    handler.setFormatter(formatter)
    handler.set_name("conveyor")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "conveyor"]:
        root.removeHandler(old)
    if _listener is not None:
        _listener.stop()
    else:
        atexit.register(_flush_logs)
    _listener = logging.handlers.QueueListener(handler.queue, writer)
    _listener.start()
    root.addHandler(handler)
    root.setLevel(level.upper())


def _flush_logs() -> None:
    if _listener is not None:
        _listener.stop()


# -- the job lines ---------------------------------------------------------------------------

# Event -> (level, short name, sentence). job.dead is the same moment as job.failed: one line
# is enough. The sentence's fields: who (job and queue), attempt, error (type: message).
_JOB_LINES = {
    "job.attempt_failed": (logging.WARNING, "attempt failed", "{who} {attempt} failed: {error}"),
    "job.retried": (logging.INFO, "job retried", "{who} queued again after {attempt} failed"),
    "job.failed": (
        logging.ERROR, "job failed, in the dead letters",
        "{who} failed for good after {attempt}, now in the dead letters: {error}",
    ),
}  # fmt: skip
_DEBUG_LINES = {
    "job.started": (logging.DEBUG, "attempt started", "{who} {attempt} started"),
    "job.completed": (logging.DEBUG, "job completed", "{who} completed ({attempt})"),
    "job.snoozed": (logging.DEBUG, "job snoozed", "{who} snoozed ({attempt} not spent)"),
}
_LINES = {**_JOB_LINES, **_DEBUG_LINES}
RECOVERED = (
    "taken back by recovery (its worker stopped sending heartbeats, or it ran far past expire_in)"
)
_subscribed: weakref.WeakKeyDictionary[Events, set[str]] = weakref.WeakKeyDictionary()


def install_job_logging(events: Events) -> None:
    """Subscribe the job lines to ``events`` (once each); the DEBUG ones only while the
    ``conveyor.job`` logger is enabled for DEBUG. Call it before the worker is built."""
    lines = dict(_JOB_LINES)
    if job_log.isEnabledFor(logging.DEBUG):
        lines.update(_DEBUG_LINES)
    done = _subscribed.setdefault(events, set())
    for name in lines.keys() - done:
        events.on(name)(_log_event)
        done.add(name)


def _log_event(event: Event) -> None:
    level, summary, sentence = _LINES[event.name]
    if not job_log.isEnabledFor(level):
        return
    job = event.job
    fields: dict[str, Any] = {"_summary": summary, "event": event.name}
    if job is not None:
        fields.update(job_id=str(job.id), queue=job.queue, attempt=job.attempt)
        fields["max_attempts"] = job.max_attempts
        attempt = f"attempt {job.attempt}/{job.max_attempts}"
    else:  # taken back by recovery from a dead worker: only the id and queue are at hand
        fields.update(job_id=str(event.job_id), queue=event.queue, recovered=True)
        attempt = "its attempt"
    error = event.error
    if error is not None:
        fields["error_type"] = error.get("type")
        text = str(error.get("message", ""))
        fields["error"] = text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "…"
        if job_log.isEnabledFor(logging.DEBUG) and error.get("traceback"):
            fields["traceback"] = error["traceback"]
    fields["worker_id"] = str(event.worker_id)
    said = RECOVERED if error is None else f"{fields['error_type']}: {fields['error']}"
    message = sentence.format(
        who=f"job {fields['job_id']} (queue {fields['queue']})", attempt=attempt, error=said
    )
    job_log.log(level, message, extra=fields)


# -- the worker's lines ----------------------------------------------------------------------


def version() -> str:
    """The installed version of Conveyor."""
    try:
        return metadata.version("conveyor")
    except metadata.PackageNotFoundError:
        return "unknown"


def log_worker_started(worker_id: UUID, options: WorkerOptions, *, schema: str, dsn: str) -> None:
    """The startup line: version, schema, queues, concurrency, where the database is."""
    fields: dict[str, Any] = {
        "_summary": "worker started",
        "worker_id": str(worker_id),
        "version": version(),
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "schema": schema,
        "queues": list(options.queues),
        "concurrency": options.concurrency,
        "prefetch": "auto" if options.prefetch is None else options.prefetch,
        "database": describe_dsn(dsn),
        "burst": options.burst,
    }
    worker_log.info(
        "worker %s started: conveyor %s, schema %s, queues %s, concurrency %d, database %s",
        fields["worker_id"], fields["version"], schema, ",".join(options.queues),
        options.concurrency, fields["database"], extra=fields,
    )  # fmt: skip


def log_worker_stopped(worker_id: UUID, attempts: int, error: BaseException | None = None) -> None:
    """The last line of a worker: how many attempts it ran, and the error that ended it."""
    extra: dict[str, Any] = {"worker_id": str(worker_id), "attempts": attempts}
    if error is None:
        extra["_summary"] = "worker stopped"
        worker_log.info("worker %s stopped after %d attempt(s)", worker_id, attempts, extra=extra)
        return
    extra.update(
        _summary="worker stopped on an error",
        error_type=type(error).__name__,
        error=str(error)[:MAX_MESSAGE],
    )
    worker_log.error(
        "worker %s stopped on an error after %d attempt(s): %s: %s",
        worker_id, attempts, extra["error_type"], extra["error"], extra=extra,
    )  # fmt: skip
