"""Validation of everything a caller may pass: queue names, payloads, job options, queue policies.

Pure rules with no I/O: they turn loose user input into normalised values or raise a typed error
from :mod:`conveyor.errors` before anything reaches the database. The database repeats the range
rules as CHECK constraints, so raw SQL callers are held to them too.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from conveyor.cron import MISSED_POLICIES, check_cron, check_timezone
from conveyor.errors import (
    InvalidOption,
    InvalidQueueName,
    PayloadError,
    PayloadTooLarge,
    UnknownOption,
)
from conveyor.models import Job, JobState, QueuePolicy

QUEUE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/:]{0,127}")
# NOTIFY channels are named after the schema ("conveyor:<schema>:cancel" the longest) and
# PostgreSQL refuses a channel name over 63 bytes: a longer schema name would break cancel and
# recovery, so it is refused here.
SCHEMA_NAME_MAX = 63 - len("conveyor:") - len(":cancel")
SCHEMA_NAME = re.compile(rf"[a-z_][a-z0-9_]{{0,{SCHEMA_NAME_MAX - 1}}}")
INT32 = (-(2**31), 2**31 - 1)
MAX_RETRY_LIMIT = 10_000
TEN_YEARS = 10 * 366 * 86_400.0
MAX_KEY_LENGTH = 255
BACKOFF_KINDS = ("fixed", "linear", "exponential")
UNIQUE_MODES = ("keep", "replace")

# The options a job and a queue share; the most specific level that sets one wins:
# job, then queue, then app.
DEFAULTABLE = (
    "priority",
    "retry_limit",
    "retry_delay",
    "retry_backoff",
    "retry_delay_max",
    "expire_in",
    "retention",
)
JOB_OPTIONS = (
    *DEFAULTABLE,
    "start_after",
    "singleton_key",
    "singleton_seconds",
    "unique_key",
    "unique_mode",
    "debounce_seconds",
    "dead_letter",
    "group_key",
    "fair_key",
    "depends_on",
    "on_dependency_failure",
    "on_complete",
)
# What a dependant does when a job it depends on fails or is cancelled: fail too (into the dead
# letters, with a DependencyFailed error), or run anyway once the others finished.
DEPENDENCY_FAILURE_POLICIES = ("fail", "run")
QUEUE_OPTIONS = (*DEFAULTABLE, "policy", "dead_letter", "concurrency", "rate_limit", "fair")


def check_queue_name(name: object, what: str = "queue name") -> str:
    """Return ``name`` if it is a valid queue name, else raise :class:`InvalidQueueName`."""
    if not isinstance(name, str) or not QUEUE_NAME.fullmatch(name):
        raise InvalidQueueName(
            f"invalid {what} {name!r}: use 1-128 characters from letters, digits and _ . - / :, "
            "not starting with a punctuation mark"
        )
    return name


def check_schema_name(name: object) -> str:
    """Return ``name`` if it is a valid schema name (lower-case identifier, at most
    ``SCHEMA_NAME_MAX`` characters)."""
    if not isinstance(name, str) or not SCHEMA_NAME.fullmatch(name):
        raise InvalidOption(
            f"invalid schema name {name!r}: use a lower-case identifier of at most "
            f"{SCHEMA_NAME_MAX} characters"
        )
    return name


# What json.dumps(allow_nan=False, ensure_ascii=False, separators=(",", ":")) builds per call.
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def encode_payload(data: object, limit: int) -> str:
    """Serialise a payload to JSON text, refusing what PostgreSQL's jsonb cannot store."""
    try:
        text = _ENCODER.encode(data)
    except (TypeError, ValueError) as exc:
        raise PayloadError(f"payload is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise PayloadError("payload is nested too deeply to serialise") from None
    if "\\u0000" in text and _contains_nul(data):
        raise PayloadError("payload contains a NUL character (\\u0000), which jsonb cannot store")
    if text.isascii():  # one byte a character, and no lone surrogate
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise PayloadError("payload contains invalid Unicode (a lone surrogate)") from None
    if size > limit:
        raise PayloadTooLarge(size, limit)
    return text


def _contains_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_contains_nul(v) for v in value)
    return False


def check_int(name: str, value: object, low: int, high: int) -> int:
    """An integer option within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidOption(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidOption(f"{name} must be between {low} and {high}, got {value}")
    return value


def check_seconds(name: str, value: object, *, allow_zero: bool, high: float = TEN_YEARS) -> float:
    """A duration given as seconds (int or float) or a timedelta, returned as float seconds."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise InvalidOption(
            f"{name} must be a number of seconds or a timedelta, got {type(value).__name__}"
        )
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise InvalidOption(f"{name} must be {'>= 0' if allow_zero else '> 0'} seconds")
    if seconds > high:
        raise InvalidOption(f"{name} must be at most {high:g} seconds")
    return seconds


def check_key(name: str, value: object) -> str:
    """A key (unique, singleton, group): a non-empty string of at most 255 characters."""
    if not isinstance(value, str) or not value:
        raise InvalidOption(f"{name} must be a non-empty string")
    if len(value) > MAX_KEY_LENGTH or "\x00" in value:
        raise InvalidOption(f"{name} must be at most {MAX_KEY_LENGTH} characters, without NUL")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            # PostgreSQL stores no lone surrogate (as text or in JSON): refused here, typed.
            raise InvalidOption(f"{name} contains invalid Unicode (a lone surrogate)") from None
    return value


def check_backoff(value: object) -> str:
    """``True`` means exponential, ``False`` fixed; or one of the kinds by name."""
    if value is True:
        return "exponential"
    if value is False:
        return "fixed"
    if value in BACKOFF_KINDS:
        return str(value)
    raise InvalidOption(f"retry_backoff must be a bool or one of {', '.join(BACKOFF_KINDS)}")


def _check_unknown(given: Iterable[str], known: tuple[str, ...], what: str) -> None:
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownOption(f"unknown {what} {name!r}{hint}")


def check_defaultable(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the options shared by jobs, queues and the app; ``None`` means "not set"."""
    out: dict[str, Any] = {}
    for name in DEFAULTABLE:
        value = options.get(name)
        if value is None:
            continue
        if name == "priority":
            out[name] = check_int(name, value, *INT32)
        elif name == "retry_limit":
            out[name] = check_int(name, value, 0, MAX_RETRY_LIMIT)
        elif name == "retry_backoff":
            out[name] = check_backoff(value)
        else:
            # retention 0: a completed job keeps no history (delete-on-complete).
            out[name] = check_seconds(name, value, allow_zero=name in ("retry_delay", "retention"))
    return out


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One validated job, ready to insert; ``None`` options take the queue's or app's default."""

    id: uuid.UUID
    queue: str
    data: str
    priority: int | None = None
    run_at: datetime | None = None
    delay: float | None = None
    retry_limit: int | None = None
    retry_delay: float | None = None
    retry_backoff: str | None = None
    retry_delay_max: float | None = None
    expire_in: float | None = None
    retention: float | None = None
    singleton_key: str | None = None
    singleton_seconds: int | None = None
    unique_key: str | None = None
    unique_replace: bool = False
    dead_letter: str | None = None
    group_key: str | None = None
    depends_on: str | None = None
    fair_key: str | None = None
    on_dependency_failure: str | None = None
    on_complete: str | None = None

    @property
    def linked(self) -> bool:
        """True when the job needs link_jobs: dependencies or a completion hook."""
        return self.depends_on is not None or self.on_complete is not None

    @property
    def plain(self) -> bool:
        """True when the job may take the send's fast path (``job_insert_plain``): no unique or
        throttle key to settle, no dependencies, no completion hook."""
        return (
            self.unique_key is None
            and self.singleton_seconds is None
            and self.depends_on is None
            and self.on_complete is None
        )


def job_spec(queue: str, data: object, options: Mapping[str, Any], payload_limit: int) -> JobSpec:
    """Validate a queue name, payload and job options into a :class:`JobSpec`."""
    check_queue_name(queue)
    if not options:  # the common send: nothing else to check
        return JobSpec(id=new_job_id(), queue=queue, data=encode_payload(data, payload_limit))
    _check_unknown(options, JOB_OPTIONS, "job option")
    values = check_defaultable(options)
    start_after = options.get("start_after")
    if isinstance(start_after, datetime):
        if start_after.tzinfo is None:
            raise InvalidOption("start_after must be an aware datetime (give it a tzinfo)")
        values["run_at"] = start_after
    elif start_after is not None:
        values["delay"] = check_seconds("start_after", start_after, allow_zero=True)
    singleton_key = options.get("singleton_key")
    singleton_seconds = options.get("singleton_seconds")
    if singleton_seconds is not None:
        values["singleton_seconds"] = check_int(
            "singleton_seconds", singleton_seconds, 1, 2**31 - 1
        )
        values["singleton_key"] = (
            "" if singleton_key is None else check_key("singleton_key", singleton_key)
        )
    elif singleton_key is not None:
        raise InvalidOption(
            "singleton_key needs singleton_seconds (the throttle window); "
            "to dedupe while a job is queued or running, use unique_key"
        )
    if options.get("unique_key") is not None:
        if "singleton_key" in values:
            raise InvalidOption("unique_key and singleton_key cannot be combined on one job")
        values["unique_key"] = check_key("unique_key", options["unique_key"])
        mode = options.get("unique_mode", "keep")
        if mode not in UNIQUE_MODES:
            raise InvalidOption(f"unique_mode must be one of {', '.join(UNIQUE_MODES)}")
        values["unique_replace"] = mode == "replace"
    elif options.get("unique_mode") is not None:
        raise InvalidOption("unique_mode needs a unique_key")
    if options.get("debounce_seconds") is not None:
        # Debounce: the job runs debounce_seconds after the last send of its key; each send in
        # the meantime replaces the waiting job's payload and pushes its start back.
        if "unique_key" not in values or options.get("unique_mode") == "keep":
            raise InvalidOption("debounce_seconds needs a unique_key (the debounce key)")
        if start_after is not None:
            raise InvalidOption("debounce_seconds sets the start: do not give start_after too")
        values["delay"] = check_seconds(
            "debounce_seconds", options["debounce_seconds"], allow_zero=False
        )
        values["unique_replace"] = True
    if options.get("dead_letter") is not None:
        values["dead_letter"] = check_queue_name(options["dead_letter"], "dead_letter queue")
    if options.get("group_key") is not None:
        values["group_key"] = check_key("group_key", options["group_key"])
    if options.get("fair_key") is not None:
        values["fair_key"] = check_key("fair_key", options["fair_key"])
    if options.get("depends_on"):
        depends_on = options["depends_on"]
        if isinstance(depends_on, str | uuid.UUID) or not isinstance(depends_on, Iterable):
            raise InvalidOption("depends_on must be a list of job ids")
        values["depends_on"] = json.dumps([str(_check_uuid(v)) for v in depends_on])
    policy = options.get("on_dependency_failure")
    if policy is not None:
        if policy not in DEPENDENCY_FAILURE_POLICIES:
            raise InvalidOption(
                f"on_dependency_failure must be one of {', '.join(DEPENDENCY_FAILURE_POLICIES)}"
            )
        if "depends_on" not in values:
            raise InvalidOption("on_dependency_failure needs depends_on")
        values["on_dependency_failure"] = policy
    if options.get("on_complete") is not None:
        values["on_complete"] = check_queue_name(options["on_complete"], "on_complete queue")
    return JobSpec(
        id=new_job_id(),
        queue=queue,
        data=encode_payload(data, payload_limit),
        **values,
    )


@dataclass(frozen=True, slots=True)
class BareJobs:
    """A batch of jobs that set no option, given or a handler's: their columns, with no
    :class:`JobSpec` each (building one cost a batch's job more than anything but its JSON)."""

    ids: list[uuid.UUID]
    queues: list[str]
    data: list[str]

    def specs(self) -> list[JobSpec]:
        """The same jobs as specs, for the general path."""
        return [
            JobSpec(id=i, queue=q, data=d)
            for i, q, d in zip(self.ids, self.queues, self.data, strict=True)
        ]


def bare_jobs(
    items: Iterable[Any], defaults_for: Callable[[str], Mapping[str, Any]], payload_limit: int
) -> BareJobs | None:
    """The jobs of a send_batch (``(queue, data)`` or ``(queue, data, options)``) as
    :class:`BareJobs` when none sets an option and no queue's handler has defaults, else None
    (then every job goes through :func:`job_spec`). Checked in the order :func:`job_spec` checks
    them, job after job, so a bad job raises the same error either way."""
    ids: list[uuid.UUID] = []
    queues: list[str] = []
    data: list[str] = []
    checked: set[str] = set()
    for item in items:
        if len(item) > 2 and item[2]:
            return None
        queue = item[0]
        if queue.__class__ is not str or queue not in checked:
            check_queue_name(queue)
            if defaults_for(queue):
                return None
            checked.add(queue)
        queues.append(queue)
        data.append(encode_payload(item[1], payload_limit))
        ids.append(new_job_id())
    return BareJobs(ids, queues, data)


def _check_uuid(value: object) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise InvalidOption(f"depends_on must hold job ids (UUIDs), got {value!r}")


def check_job_id(value: object) -> uuid.UUID:
    """A job id as a UUID; a malformed id is an :class:`InvalidOption`."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise InvalidOption(f"job id must be a UUID, got {value!r}") from None


_id_lock = threading.Lock()
_id_last = [0, 0]  # the millisecond of the last id, and the counter within it
# Random bits for ids, drawn from the OS 4 KiB at a time (one system call per 512 ids, not one
# per id), and forgotten in a forked child, which must not reuse its parent's.
_RANDOM_CHUNK = 4096
_random: list[Any] = [b"", _RANDOM_CHUNK]  # the chunk, and where its unused bytes start
os.register_at_fork(after_in_child=lambda: _random.__setitem__(1, _RANDOM_CHUNK))
_TAIL_MASK = (1 << 62) - 1
_VERSION_BITS = (0x7 << 76) | (0b10 << 62)
_SAFE = uuid.SafeUUID.unknown


def new_job_id() -> uuid.UUID:
    """A version-7 UUID: time-ordered, so new rows land at the right edge of the primary key,
    and monotonic within this process (a 12-bit counter orders ids of the same millisecond), so
    jobs of equal priority and run time run in the order they were sent."""
    with _id_lock:
        millis = time.time_ns() // 1_000_000
        if millis <= _id_last[0]:
            millis = _id_last[0]
            _id_last[1] += 1
            if _id_last[1] > 0xFFF:
                millis += 1
                _id_last[1] = 0
        else:
            _id_last[1] = 0
        _id_last[0] = millis
        counter = _id_last[1]
        at = _random[1]
        if at >= _RANDOM_CHUNK:
            _random[0], at = os.urandom(_RANDOM_CHUNK), 0
        _random[1] = at + 8
        tail = int.from_bytes(_random[0][at : at + 8], "big") & _TAIL_MASK
    value = (millis << 80) | (counter << 64) | _VERSION_BITS | tail
    # uuid.UUID(int=value) without its argument checks, which cost as much as the rest.
    job_id = object.__new__(uuid.UUID)
    object.__setattr__(job_id, "int", value)
    object.__setattr__(job_id, "is_safe", _SAFE)
    return job_id


def queue_policy(options: Mapping[str, Any], *, partial: bool) -> dict[str, Any]:
    """Validate a queue's policy and defaults; with ``partial``, only the given keys are kept."""
    _check_unknown(options, QUEUE_OPTIONS, "queue option")
    out = check_defaultable(options)
    explicit_none = {k for k, v in options.items() if v is None}
    if "policy" in options and options["policy"] is not None:
        try:
            out["policy"] = QueuePolicy(options["policy"]).value
        except ValueError:
            kinds = ", ".join(p.value for p in QueuePolicy)
            raise InvalidOption(f"policy must be one of {kinds}") from None
    if options.get("dead_letter") is not None:
        out["dead_letter"] = check_queue_name(options["dead_letter"], "dead_letter queue")
    if options.get("concurrency") is not None:
        out["concurrency"] = check_int("concurrency", options["concurrency"], 1, 1_000_000)
    rate = options.get("rate_limit")
    if rate is not None:
        count, interval = rate if isinstance(rate, tuple | list) else (rate, 1.0)
        out["rate_limit"] = check_int("rate_limit", count, 1, 1_000_000_000)
        out["rate_interval"] = check_seconds("rate_limit interval", interval, allow_zero=False)
    if options.get("fair") is not None:
        if not isinstance(options["fair"], bool):
            raise InvalidOption("fair must be True or False")
        out["fair"] = options["fair"]
    if partial:
        for name in explicit_none:
            out.setdefault(name, None)
            if name == "rate_limit":
                out["rate_interval"] = None
        if out.get("policy", "") is None:
            out["policy"] = QueuePolicy.STANDARD.value
    return out


def list_filters(
    queue: str | None,
    state: object,
    limit: object,
    offset: object,
    order: str,
    since: object = None,
    search: object = None,
    after: object = None,
) -> dict[str, Any]:
    """Validate the filters of ``list_jobs`` into the store's parameters.

    ``since`` is an aware datetime, or a timedelta or seconds before now; ``search`` a substring
    of the payload's JSON text or of the job id, matched case-insensitively and literally;
    ``after`` the last job of the previous page, or its (created_at, id).
    """
    if queue is not None:
        check_queue_name(queue)
    states: list[str] | None = None
    if state is not None:
        given = [state] if isinstance(state, str) else list(state)  # type: ignore[call-overload]
        try:
            states = [JobState(s).value for s in given]
        except ValueError:
            names = ", ".join(s.value for s in JobState)
            raise InvalidOption(f"state must be one of {names}") from None
    if order not in ("asc", "desc"):
        raise InvalidOption("order must be 'asc' or 'desc'")
    return {
        "queue": queue,
        "states": states,
        "limit": check_int("limit", limit, 1, 10_000),
        "offset": check_int("offset", offset, 0, 2**31 - 1),
        "descending": order == "desc",
        **since_filter(since),
        "search": search_pattern(search),
        "after": page_cursor(after),
    }


def cursor_text(job: Job) -> str:
    """The text that names ``job`` as the last of a page (what ``after`` takes)."""
    return f"{job.created_at.isoformat()},{job.id}"


def page_cursor(after: object) -> tuple[datetime, uuid.UUID] | None:
    """The (created_at, id) a page of jobs starts after: from a :class:`Job`, such a pair, or
    the text ``<ISO created_at>,<id>`` (what the admin API hands out)."""
    if after is None:
        return None
    if isinstance(after, Job):
        return after.created_at, after.id
    if isinstance(after, str):
        created_at, _, job_id = after.partition(",")
        try:
            return page_cursor((datetime.fromisoformat(created_at), job_id))
        except ValueError:
            raise InvalidOption("after must be '<ISO time>,<job id>'") from None
    if isinstance(after, tuple) and len(after) == 2 and isinstance(after[0], datetime):
        if after[0].tzinfo is None:
            raise InvalidOption("after's time must be aware (with a time zone)")
        return after[0], check_job_id(after[1])
    raise InvalidOption("after must be a Job, a (created_at, id) pair or '<ISO time>,<job id>'")


def since_filter(since: object) -> dict[str, Any]:
    """``since`` as the store's ``since_at`` (a point in time) or ``since_seconds`` (before now)."""
    if since is None:
        return {"since_at": None, "since_seconds": None}
    if isinstance(since, datetime):
        if since.tzinfo is None:
            raise InvalidOption("since must be an aware datetime (with a time zone)")
        return {"since_at": since, "since_seconds": None}
    return {"since_at": None, "since_seconds": check_seconds("since", since, allow_zero=True)}


def search_pattern(search: object) -> str | None:
    """An ILIKE pattern matching ``search`` anywhere, its wildcards and escapes taken literally."""
    if search is None:
        return None
    if not isinstance(search, str) or not search:
        raise InvalidOption("search must be a non-empty string")
    if len(search) > 1000:
        raise InvalidOption("search must be at most 1000 characters")
    if "\x00" in search:
        raise InvalidOption("search must not contain a NUL character")
    escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def sql_send_options(spec: JobSpec) -> str:
    """The options of a validated job that the database will send (a schedule's, a publish's),
    as the JSON object that the SQL function ``send`` takes (durations in seconds, keys as
    strings)."""
    out: dict[str, Any] = {}
    for name in ("priority", "retry_limit", "retry_delay", "retry_backoff", "retry_delay_max",
                 "expire_in", "retention", "dead_letter", "group_key"):  # fmt: skip
        value = getattr(spec, name)
        if value is not None:
            out[name] = value
    if spec.delay is not None:
        out["start_after"] = spec.delay
    if spec.run_at is not None:
        raise InvalidOption("a schedule's start_after must be a delay, not a datetime")
    if spec.unique_key is not None:
        out["unique_key"] = spec.unique_key
        out["unique_mode"] = "replace" if spec.unique_replace else "keep"
    if spec.singleton_seconds is not None:
        out["singleton_key"] = spec.singleton_key
        out["singleton_seconds"] = spec.singleton_seconds
    if spec.on_complete is not None:
        out["on_complete"] = spec.on_complete
    if spec.depends_on is not None:
        raise InvalidOption("a job sent from SQL (a schedule, publish) cannot depend on other jobs")
    return json.dumps(out)


def schedule_values(
    name: str,
    cron: object,
    every: object,
    queue: str | None,
    data: object,
    tz: object,
    missed: object,
    backfill_limit: object,
    options: Mapping[str, Any],
    payload_limit: int,
) -> dict[str, Any]:
    """Validate a schedule into the parameters of ``schedule_upsert``."""
    check_queue_name(name, "schedule name")
    target = check_queue_name(queue if queue is not None else name)
    zone = check_timezone(tz)
    if (cron is None) == (every is None):
        raise InvalidOption("give a schedule either cron or every, not both or neither")
    if missed not in MISSED_POLICIES:
        raise InvalidOption(f"missed must be one of {', '.join(MISSED_POLICIES)}")
    return {
        "name": name,
        "cron": check_cron(cron, zone) if cron is not None else None,
        "every": check_seconds("every", every, allow_zero=False) if every is not None else None,
        "tz": zone,
        "queue": target,
        "data": encode_payload(data, payload_limit),
        "options": sql_send_options(job_spec(target, data, options, payload_limit)),
        "missed": missed,
        "backfill_limit": check_int("backfill_limit", backfill_limit, 1, 10_000),
    }
