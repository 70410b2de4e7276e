"""The admin HTTP API under ``/api``: JSON in and out, described by ``/api/openapi.json``.

Every endpoint needs a credential (see :mod:`conveyor.web.security`); writes are CSRF-checked.
Conveyor's errors map to statuses: not found 404, wrong state 409, invalid input 400, database
unreachable 503; the body is always ``{"error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from conveyor.app import Conveyor
from conveyor.cron import next_tick
from conveyor.errors import (
    DatabaseUnavailable,
    InvalidOption,
    JobStateError,
    NotFound,
    ValidationError,
)
from conveyor.models import Schedule
from conveyor.options import cursor_text
from conveyor.web.encode import job_json, plain, queue_json, schedule_json, stats_json
from conveyor.web.openapi import openapi_document
from conveyor.web.security import CSRF_FIELD, Forbidden, Guard, HttpError, is_cross_site

Params = Mapping[str, Any]
N = TypeVar("N", int, float)
Action = Callable[[Request, Params], Awaitable[Any]]

# The filters GET /api/jobs accepts; anything else is refused rather than silently ignored.
JOB_FILTERS = frozenset({"queue", "state", "since", "search", "limit", "offset", "order", "after"})
# The body of POST /api/jobs/bulk, and the fields of its "filter" object.
BULK_FIELDS = frozenset({"action", "filter", "priority", "dry_run"})
BULK_FILTERS = frozenset({"queue", "state", "older_than", "search", "group_key"})
# The body of POST /api/jobs: the job's queue, payload and options (those of send()).
SEND_FIELDS = frozenset({"queue", "data", "options"})
DEFAULT_LIMIT = 50


def error_response(status: int, kind: str, message: str) -> JSONResponse:
    """The JSON error body every failure of the API answers with."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"error": {"type": kind, "message": message}}, status_code=status, headers=headers
    )


def conveyor_error_status(exc: Exception) -> int | None:
    """The HTTP status of a Conveyor error, or None for an unexpected one."""
    if isinstance(exc, HttpError):
        return exc.status
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, JobStateError):
        return 409
    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, DatabaseUnavailable):
        return 503
    return None


def error_kind(exc: Exception) -> str:
    """The ``type`` field of an error body."""
    return exc.kind if isinstance(exc, HttpError) else type(exc).__name__


def next_run(schedule: Schedule, now: datetime) -> datetime | None:
    """When the schedule sends its next job; None if it is disabled."""
    if not schedule.enabled:
        return None
    # Interval ticks count from the schedule's creation, as the scheduler counts them.
    return next_tick(
        cron=schedule.cron,
        every=schedule.every,
        tz=schedule.tz,
        anchor=schedule.created_at,
        now=now,
    )


async def read_params(request: Request) -> dict[str, Any]:
    """The query string merged with a JSON object or form body (the body wins)."""
    params: dict[str, Any] = dict(request.query_params)
    if "state" in request.query_params:
        params["state"] = request.query_params.getlist("state")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        raw = await request.body()
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                raise InvalidOption("the request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise InvalidOption("the request body must be a JSON object")
            params.update(body)
    elif kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


def only(params: Params, allowed: frozenset[str]) -> None:
    """Refuse parameters outside ``allowed``."""
    unknown = sorted(set(params) - allowed - {CSRF_FIELD})
    if unknown:
        names = ", ".join(sorted(allowed)) or "none"
        raise InvalidOption(f"unknown parameter {unknown[0]!r}; accepted: {names}")


def _number(params: Params, name: str, convert: Callable[[Any], N], what: str) -> N | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidOption(f"{name} must be {what}")
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise InvalidOption(f"{name} must be {what}, got {value!r}") from None


def int_param(params: Params, name: str, default: int) -> int:
    """An integer parameter (range checks are the client's)."""
    found = _number(params, name, int, "an integer")
    return default if found is None else found


def float_param(params: Params, name: str) -> float | None:
    """A number of seconds, or None when absent."""
    return _number(params, name, float, "a number of seconds")


def str_param(params: Params, name: str) -> str | None:
    """A text parameter, or None when absent or empty."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidOption(f"{name} must be a string")
    return value


def datetime_param(params: Params, name: str) -> datetime | None:
    """An ISO 8601 timestamp (UTC when it names no offset), or None when absent."""
    value = str_param(params, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidOption(f"{name} must be an ISO 8601 timestamp, got {value!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def states_param(params: Params) -> list[str] | None:
    """``state=a&state=b`` or ``state=a,b``; None when absent."""
    value = params.get("state")
    if value is None or value == "" or value == []:
        return None
    given = value if isinstance(value, list) else [value]
    states = [part.strip() for item in given for part in str(item).split(",") if part.strip()]
    return states or None


class Api:
    """The endpoints of the admin API over one application."""

    def __init__(self, conveyor: Conveyor, guard: Guard) -> None:
        self.conveyor = conveyor
        self.guard = guard

    def routes(self) -> list[Route]:
        """Every API route; the OpenAPI document lists the same ones (a test checks)."""
        table: list[tuple[str, str, str, Action]] = [
            ("GET", "/api/openapi.json", "api_openapi", self.openapi),
            ("GET", "/api/queues", "api_queues", self.queues),
            ("GET", "/api/queues/{name}", "api_queue", self.queue),
            ("POST", "/api/queues/{name}/purge", "api_queue_purge", self.queue_purge),
            ("POST", "/api/queues/{name}/pause", "api_queue_pause", self.queue_pause),
            ("POST", "/api/queues/{name}/resume", "api_queue_resume", self.queue_resume),
            ("POST", "/api/queues/{name}/fair", "api_queue_fair", self.queue_fair),
            ("GET", "/api/jobs", "api_jobs", self.jobs),
            ("POST", "/api/jobs", "api_job_send", self.job_send),
            ("POST", "/api/jobs/bulk", "api_jobs_bulk", self.jobs_bulk),
            ("GET", "/api/jobs/{id}", "api_job", self.job),
            ("POST", "/api/jobs/{id}/retry", "api_job_retry", self.job_retry),
            ("POST", "/api/jobs/{id}/cancel", "api_job_cancel", self.job_cancel),
            ("DELETE", "/api/jobs/{id}", "api_job_delete", self.job_delete),
            ("GET", "/api/dead", "api_dead", self.dead),
            ("POST", "/api/dead/retry", "api_dead_retry_all", self.dead_retry_all),
            ("POST", "/api/dead/purge", "api_dead_purge", self.dead_purge),
            ("POST", "/api/dead/{id}/retry", "api_dead_retry", self.dead_retry),
            ("GET", "/api/schedules", "api_schedules", self.schedules),
            ("GET", "/api/workers", "api_workers", self.workers),
            ("GET", "/api/stats", "api_stats", self.stats),
            ("GET", "/api/stats/series", "api_stats_series", self.stats_series),
        ]
        return [
            Route(path, self.endpoint(action), methods=[method], name=name)
            for method, path, name, action in table
        ]

    def endpoint(self, action: Action) -> Callable[[Request], Awaitable[Response]]:
        """Wrap an action with authentication, the write checks and the error mapping."""

        async def run(request: Request) -> Response:
            try:
                credential = self.guard.require(request)
                write = request.method not in ("GET", "HEAD")
                if write and is_cross_site(request):
                    raise Forbidden("cross-site request refused")
                params = await read_params(request)
                if write:
                    token = params.get(CSRF_FIELD)
                    self.guard.check_write(
                        request, credential, token if isinstance(token, str) else None
                    )
                result = await action(request, params)
            except Exception as exc:
                status = conveyor_error_status(exc)
                if status is None:
                    raise
                return error_response(status, error_kind(exc), str(exc))
            return result if isinstance(result, Response) else JSONResponse(result)

        return run

    # -- queues ------------------------------------------------------------------------------

    async def openapi(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        return openapi_document(request.scope.get("root_path", ""))

    async def queues(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        queues = await self.conveyor.list_queues_async()
        stats = {s.queue: s for s in await self.conveyor.queue_stats_async()}
        return {"queues": [queue_json(q, stats.get(q.name)) for q in queues]}

    async def queue(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        name = request.path_params["name"]
        queue = await self.conveyor.get_queue_async(name)
        return queue_json(queue, await self.conveyor.queue_stats_async(name))

    async def queue_purge(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        name = request.path_params["name"]
        return {"queue": name, "purged": await self.conveyor.purge_queue_async(name)}

    async def queue_pause(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        queue = await self.conveyor.pause_queue_async(request.path_params["name"])
        return {"queue": queue.name, "paused": queue.paused}

    async def queue_resume(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        queue = await self.conveyor.resume_queue_async(request.path_params["name"])
        return {"queue": queue.name, "paused": queue.paused}

    async def queue_fair(self, request: Request, params: Params) -> Any:
        only(params, frozenset({"fair"}))
        fair = params.get("fair", True)
        if isinstance(fair, str):  # a form field
            fair = {"true": True, "false": False}.get(fair.lower(), fair)
        if not isinstance(fair, bool):
            raise InvalidOption("fair must be true or false")
        queue = await self.conveyor.update_queue_async(request.path_params["name"], fair=fair)
        return {"queue": queue.name, "fair": queue.fair}

    # -- jobs --------------------------------------------------------------------------------

    async def jobs_bulk(self, request: Request, params: Params) -> Any:
        only(params, BULK_FIELDS)
        action = params.get("action")
        if not isinstance(action, str):
            raise InvalidOption("action is required: cancel, retry, delete or reprioritize")
        found = params.get("filter")
        if not isinstance(found, dict):
            raise InvalidOption("filter is required: an object with at least one criterion")
        unknown = sorted(set(found) - BULK_FILTERS)
        if unknown:
            names = ", ".join(sorted(BULK_FILTERS))
            raise InvalidOption(f"unknown filter {unknown[0]!r}; accepted: {names}")
        result = await self.conveyor.bulk_jobs_async(
            action,
            queue=found.get("queue"),
            state=found.get("state"),
            older_than=found.get("older_than"),
            search=found.get("search"),
            group_key=found.get("group_key"),
            priority=params.get("priority"),
            dry_run=params.get("dry_run", False),
        )
        return plain(result)

    async def job_send(self, request: Request, params: Params) -> Any:
        only(params, SEND_FIELDS)
        queue = params.get("queue")
        if not isinstance(queue, str) or not queue:
            raise InvalidOption("queue is required: the name of the queue to send the job to")
        options = params.get("options")
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise InvalidOption("options must be an object of job options (as send() takes)")
        options = dict(options)
        start_after = options.get("start_after")
        if isinstance(start_after, str):  # a moment; a number stays a delay in seconds
            options["start_after"] = datetime_param(options, "start_after")
        job_id = await self.conveyor.send_async(queue, params.get("data"), **options)
        return job_json(await self.conveyor.get_job_async(job_id))

    async def jobs(self, request: Request, params: Params) -> Any:
        only(params, JOB_FILTERS)
        limit = int_param(params, "limit", DEFAULT_LIMIT)
        offset = int_param(params, "offset", 0)
        jobs = await self.conveyor.list_jobs_async(
            str_param(params, "queue"),
            states_param(params),
            since=datetime_param(params, "since"),
            search=str_param(params, "search"),
            limit=limit,
            offset=offset,
            order=str_param(params, "order") or "desc",
            after=str_param(params, "after"),
        )
        last = jobs[-1] if len(jobs) == limit else None
        return {
            "jobs": [job_json(j) for j in jobs],
            "limit": limit,
            "offset": offset,
            "next": cursor_text(last) if last else None,
        }

    async def job(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        return job_json(await self.conveyor.get_job_async(request.path_params["id"]))

    async def job_retry(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        return job_json(await self.conveyor.retry_async(request.path_params["id"]))

    async def job_cancel(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        return job_json(await self.conveyor.cancel_async(request.path_params["id"]))

    async def job_delete(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        job_id = request.path_params["id"]
        await self.conveyor.delete_job_async(job_id)
        return {"id": job_id, "deleted": True}

    # -- dead letters ------------------------------------------------------------------------

    async def dead(self, request: Request, params: Params) -> Any:
        only(params, frozenset({"queue", "limit", "offset"}))
        limit = int_param(params, "limit", DEFAULT_LIMIT)
        offset = int_param(params, "offset", 0)
        jobs = await self.conveyor.list_dead_async(
            str_param(params, "queue"), limit=limit, offset=offset
        )
        return {"jobs": [job_json(j) for j in jobs], "limit": limit, "offset": offset}

    async def dead_retry(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        return job_json(await self.conveyor.retry_dead_async(request.path_params["id"]))

    async def dead_retry_all(self, request: Request, params: Params) -> Any:
        only(params, frozenset({"queue"}))
        queue = str_param(params, "queue")
        if queue is None:
            raise InvalidOption("queue is required: the dead letters of which queue to retry")
        return {"queue": queue, "retried": await self.conveyor.retry_dead_all_async(queue)}

    async def dead_purge(self, request: Request, params: Params) -> Any:
        only(params, frozenset({"queue", "older_than"}))
        purged = await self.conveyor.purge_dead_async(
            str_param(params, "queue"), older_than=float_param(params, "older_than")
        )
        return {"purged": purged}

    # -- schedules, workers, stats -----------------------------------------------------------

    async def schedules(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        now = datetime.now(UTC)
        found = await self.conveyor.list_schedules_async()
        return {"schedules": [schedule_json(s, next_run(s, now)) for s in found]}

    async def workers(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        return {"workers": plain(await self.conveyor.list_workers_async())}

    async def stats(self, request: Request, params: Params) -> Any:
        only(params, frozenset())
        stats = await self.conveyor.queue_stats_async()
        totals: dict[str, int] = {}
        for s in stats:
            for state, n in s.counts.items():
                totals[state.value] = totals.get(state.value, 0) + n
        return {
            "time": datetime.now(UTC).isoformat(),
            "queues": [stats_json(s) for s in stats],
            "totals": totals,
        }

    async def stats_series(self, request: Request, params: Params) -> Any:
        only(params, frozenset({"queue", "minutes"}))
        queue = str_param(params, "queue")
        minutes = int_param(params, "minutes", 60)
        series = await self.conveyor.queue_series_async(queue, minutes=minutes)
        return {"queue": queue, "minutes": minutes, "buckets": [plain(m) for m in series]}
