"""Build the public records from database rows, and job specs into the insert's arrays."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from conveyor.config import DEFAULT_RETENTION
from conveyor.models import Job, JobRuntime, JobState, Queue, QueuePolicy, Schedule
from conveyor.options import JobSpec

# The fields of a job to insert, in order: JobSpec's, which the SQL type job_input repeats (a
# test holds the two together).
SPEC_ARRAYS = tuple(f.name for f in dataclasses.fields(JobSpec))


# The columns of job and job_history that a Job shows. Columns a later release adds are left
# out, so this release keeps reading jobs through a rolling deploy of the next one.
JOB_COLUMNS = tuple(f.name for f in dataclasses.fields(Job) if f.init and f.name[0] != "_")


def job(row: dict[str, Any]) -> Job:
    """A :class:`Job` from a ``SELECT *`` row of ``job`` or ``job_history``."""
    values = {name: row[name] for name in JOB_COLUMNS if name in row}
    values["state"] = JobState(row["state"])
    values["depends_on"] = row["depends_on"] or []
    return Job(**values)


def job_outcome(outcome: dict[str, Any]) -> Job:
    """A :class:`Job` from the JSON outcome a "done" notification carries for a job kept in no
    history (its columns but ``data``)."""
    row = {k: v for k, v in outcome.items() if k in JOB_COLUMNS and k != "data"}
    for name in ("run_at", "created_at", "started_at", "finished_at"):
        if row.get(name) is not None:
            row[name] = datetime.fromisoformat(row[name])
    for name in ("id", "worker_id"):
        if row.get(name) is not None:
            row[name] = UUID(row[name])
    row["depends_on"] = [UUID(d) for d in row.get("depends_on") or []]
    row["state"] = JobState(row["state"])
    return Job(**row, data=None)


# How many columns job_fetch returns (the type job_fetched, in the order of Job's fields); a
# row of job_ack_fetch has more after them, which fetched_job leaves out.
FETCHED_WIDTH = 26
# Positions in the tuples job_fetch returns.
FETCHED_ID, FETCHED_QUEUE, FETCHED_STATE, FETCHED_ATTEMPT, FETCHED_DEPENDS_ON = 0, 1, 2, 5, 24
FETCHED_ERRORS = 17  # NULL for a job that never failed
# A claimed job has no result yet: the claim carries the job's meta there (migration 0009).
FETCHED_META = 16


# Job's slots in field order: the worker fills them directly, since the frozen dataclass's
# __init__ (one object.__setattr__ call per field) cost more than twice as much per job.
_JOB_SLOTS = tuple(Job.__dict__[f.name].__set__ for f in dataclasses.fields(Job))


def fetched_job(values: tuple[Any, ...], runtime: JobRuntime) -> Job:
    """A :class:`Job` bound to its attempt, from a ``job_fetch`` tuple: the worker builds one
    per job. Equal to ``Job(*fields)`` (Job has no __post_init__; a unit test checks)."""
    fields = list(values)
    del fields[FETCHED_WIDTH:]
    fields[FETCHED_STATE] = JobState.ACTIVE  # what a claim leaves
    fields[FETCHED_DEPENDS_ON] = fields[FETCHED_DEPENDS_ON] or []
    fields[FETCHED_ERRORS] = fields[FETCHED_ERRORS] or []
    meta = fields[FETCHED_META]
    fields[FETCHED_META] = None
    fair_key = None
    if meta is not None and "fair_key" in meta:  # carried in meta by the claim (0015)
        fair_key = meta.pop("fair_key")
        meta = meta or None
    # the fields after the columns: _runtime, results, meta, fair_key
    fields += (runtime, {}, meta, fair_key)
    job = object.__new__(Job)
    for put, value in zip(_JOB_SLOTS, fields, strict=True):
        put(job, value)
    return job


def schedule(row: dict[str, Any]) -> Schedule:
    """A :class:`Schedule` from a ``SELECT *`` row of ``schedule``."""
    return Schedule(**row)


def queue(row: dict[str, Any]) -> Queue:
    """A :class:`Queue` from a ``SELECT *`` row of ``queue`` (the rate limiter's bookkeeping
    columns are left out)."""
    row["policy"] = QueuePolicy(row["policy"])
    del row["rate_tokens"], row["rate_refilled_at"]
    return Queue(**row)


def insert_params(specs: Sequence[JobSpec], defaults: str, now: object) -> dict[str, Any]:
    """The parameters of ``job_insert_many`` and ``job_insert_linked``: one array per field of
    job_input, one element per job, which ``job_inputs`` turns into rows.

    An array with nothing set is sent as NULL: cheaper to send and parse.
    """
    params: dict[str, Any] = {}
    for name in SPEC_ARRAYS:
        values = [getattr(s, name) for s in specs]
        params[name] = values if any(v is not None and v is not False for v in values) else None
    params["defaults"] = defaults
    params["now"] = now
    return params


def insert_one_params(spec: JobSpec, defaults: str, now: object) -> dict[str, Any]:
    """The parameters of ``job_insert_one``."""
    params = {name: getattr(spec, name) for name in SPEC_ARRAYS}
    params["defaults"] = defaults
    params["now"] = now
    return params


# The options a job on the fast path may set (JobSpec.plain): job_insert_plain's columns.
PLAIN_OPTIONS = (
    "priority", "delay", "retry_limit", "retry_delay", "retry_backoff", "retry_delay_max",
    "expire_in", "retention", "dead_letter", "group_key", "fair_key",
)  # fmt: skip
PLAIN_ARRAYS = ("id", "queue", "data", "run_at", *PLAIN_OPTIONS)


def plain_one_params(spec: JobSpec, defaults: str, now: object, meta: str | None) -> dict[str, Any]:
    """The parameters of ``job_insert_plain``: the job's options as one JSON object (None when
    it sets none), which costs less to send than a parameter each."""
    options = {name: value for name in PLAIN_OPTIONS if (value := getattr(spec, name)) is not None}
    if spec.run_at is not None:
        options["run_at"] = spec.run_at.isoformat()
    return {
        "id": spec.id,
        "queue": spec.queue,
        "data": spec.data,
        "options": json.dumps(options) if options else None,
        "defaults": defaults,
        "now": now,
        "meta": meta,
    }


# The options a queue and the app may set for its jobs, with the built-in default of each (the
# one job_insert_plain falls back on), in the order job_insert_plain returns the queue's.
QUEUE_OPTIONS: dict[str, Any] = {
    "priority": 0, "retry_limit": 2, "retry_delay": 5.0, "retry_backoff": "exponential",
    "retry_delay_max": 3600.0, "expire_in": 900.0, "retention": DEFAULT_RETENTION,
}  # fmt: skip
# Policies whose queue keeps a queued key, which only insert_jobs settles.
KEYED_POLICIES = frozenset({"short", "stately"})


@dataclasses.dataclass(frozen=True, slots=True)
class QueueCopy:
    """What a send of one job needs of its queue, read at a version of the queue (0032): the
    parameters of ``job_insert_resolved`` for a job that sets no option, all but its id, data,
    time and meta, resolved with the app's ``defaults``."""

    defaults: dict[str, Any]
    params: dict[str, Any]


def queue_copy(queue: str, answer: tuple[Any, ...], defaults: dict[str, Any]) -> QueueCopy | None:
    """The copy of a queue from ``job_insert_plain``'s answer; None when it gave no version
    (see job.sql) or the queue keeps a queued key."""
    _inserted, version, policy, *options, dead_letter, fair, _notified = answer
    if version is None or policy in KEYED_POLICIES:
        return None
    params = {
        name: value if value is not None else defaults.get(name, built_in)
        for (name, built_in), value in zip(QUEUE_OPTIONS.items(), options, strict=True)
    }
    params.update(
        queue=queue, dead_letter=dead_letter, fair_key="" if fair else None, group_key=None,
        run_at=None, delay=0.0, version=version,
    )  # fmt: skip
    return QueueCopy(defaults, params)


def resolved_one_params(
    copy: QueueCopy, job_id: UUID, data: str, now: object, meta: str | None, spec: JobSpec | None
) -> dict[str, Any]:
    """The parameters of ``job_insert_resolved``: the options of the job's ``spec`` (None: it
    sets none) over the copy's."""
    params = dict(copy.params)
    params["id"] = job_id
    params["data"] = data
    params["now"] = now
    params["meta"] = meta
    if spec is not None:
        for name in PLAIN_OPTIONS:
            if (value := getattr(spec, name)) is not None:
                params[name] = value
        if spec.run_at is not None:
            params["run_at"] = spec.run_at
    return params


def bare_params(
    ids: list[UUID], queues: list[str], data: list[str], defaults: str, now: object
) -> dict[str, Any]:
    """The parameters of ``job_insert_plain_many`` for jobs that set no option: every option's
    array NULL."""
    params: dict[str, Any] = dict.fromkeys(PLAIN_OPTIONS)
    params.update(
        id=ids,
        queue=queues,
        data=data,
        run_at=None,
        queues=list(dict.fromkeys(queues)),
        defaults=defaults,
        now=now,
        meta=None,
    )
    return params


def plain_params(
    specs: Sequence[JobSpec], defaults: str, now: object, meta: str | None
) -> dict[str, Any]:
    """The parameters of ``job_insert_plain_many``: one array per column, as ``insert_params``
    (an array with nothing set is NULL), and the distinct queues."""
    params: dict[str, Any] = {
        "id": [s.id for s in specs],
        "queue": [s.queue for s in specs],
        "data": [s.data for s in specs],
    }
    # Most batches set no option: one look at each job, rather than one per job and column.
    optioned = any(
        s.run_at is not None
        or s.priority is not None
        or s.delay is not None
        or s.retry_limit is not None
        or s.retry_delay is not None
        or s.retry_backoff is not None
        or s.retry_delay_max is not None
        or s.expire_in is not None
        or s.retention is not None
        or s.dead_letter is not None
        or s.group_key is not None
        or s.fair_key is not None
        for s in specs
    )
    for name in PLAIN_ARRAYS[3:]:
        values = [getattr(s, name) for s in specs] if optioned else []
        params[name] = values if any(v is not None for v in values) else None
    params["queues"] = list(dict.fromkeys(params["queue"]))
    params["defaults"] = defaults
    params["now"] = now
    params["meta"] = meta
    return params


def insert_results(specs: Sequence[JobSpec], found: list[dict[str, Any]]) -> list[tuple[Any, bool]]:
    """Per spec: the job id it resolved to (None: ask again) and whether it was inserted."""
    if not found:
        return [(s.id, True) for s in specs]  # the plain path inserts every job, returns nothing
    return [(r["id"], r["inserted"]) for r in found]


def json_text(value: Any) -> str:
    """JSON text for a ``::jsonb`` parameter."""
    return json.dumps(value)
