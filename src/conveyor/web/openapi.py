"""The OpenAPI 3.1 description of the admin API (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

from conveyor.bulk import ACTIONS
from conveyor.models import JobState

STATES = [state.value for state in JobState]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "503": {"$ref": "#/components/responses/Unavailable"},
}
WRITE_ERRORS = {**ERRORS, "403": {"$ref": "#/components/responses/Forbidden"}}
NOT_FOUND = {"404": {"$ref": "#/components/responses/NotFound"}}
CONFLICT = {"409": {"$ref": "#/components/responses/Conflict"}}
LIMIT = _query(
    "limit", {"type": "integer", "minimum": 1, "maximum": 10000, "default": 50}, "Page size."
)
OFFSET = _query("offset", {"type": "integer", "minimum": 0, "default": 0}, "Rows to skip.")
JOB_ID = _path("id", "The job's id (a UUID).")
QUEUE_NAME = _path("name", "The queue's name.")


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    errors: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
    json_only: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "operationId": summary.lower().replace(" ", "_").replace("'", ""),
        "parameters": params or [],
        "responses": {"200": ok, **(errors or ERRORS)},
    }
    if body is not None:
        content = {"application/json": {"schema": body}}
        if not json_only:
            content["application/x-www-form-urlencoded"] = {"schema": body}
        op["requestBody"] = {"required": json_only, "content": content}
    return op


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
ANY: dict[str, Any] = {}
JOBS_PAGE = _object(
    {
        "jobs": {"type": "array", "items": _ref("Job")},
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
        "next": {
            "type": ["string", "null"],
            "description": "Pass as `after` for the next page; null on the last page.",
        },
    },
    ["jobs", "limit", "offset"],
)
COUNT = {"type": "integer", "minimum": 0}

SCHEMAS: dict[str, Any] = {
    "Error": _object(
        {
            "error": _object(
                {"type": {"type": "string"}, "message": {"type": "string"}}, ["type", "message"]
            )
        },
        ["error"],
    ),
    "Job": _object(
        {
            "id": {"type": "string", "format": "uuid"},
            "queue": {"type": "string"},
            "state": {"type": "string", "enum": STATES},
            "data": ANY,
            "priority": {"type": "integer"},
            "attempt": {"type": "integer"},
            "max_attempts": {"type": "integer"},
            "retry_limit": {"type": "integer"},
            "run_at": {"type": "string", "format": "date-time"},
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": NULLABLE_TIME,
            "finished_at": NULLABLE_TIME,
            "result": ANY,
            "errors": {"type": "array", "items": {"type": "object"}},
            "progress": {"type": ["object", "null"]},
            "meta": {"type": ["object", "null"]},
            "fair_key": {"type": ["string", "null"]},
        },
        ["id", "queue", "state", "attempt", "created_at"],
    ),
    "QueueStats": _object(
        {
            "queue": {"type": "string"},
            "counts": {"type": "object", "additionalProperties": COUNT},
            "queued": COUNT,
            "oldest_waiting_seconds": {"type": ["number", "null"]},
        },
        ["queue", "counts", "queued"],
    ),
    "StatsMinute": _object(
        {
            "minute": {"type": "string", "format": "date-time"},
            "completed": COUNT,
            "failed": COUNT,
            "cancelled": COUNT,
            "retried": COUNT,
            "wait_p50_ms": {"type": ["number", "null"]},
            "wait_p95_ms": {"type": ["number", "null"]},
            "backlog": {"type": ["integer", "null"], "minimum": 0},
        },
        [
            "minute",
            "completed",
            "failed",
            "cancelled",
            "retried",
            "wait_p50_ms",
            "wait_p95_ms",
            "backlog",
        ],
    ),
    "Queue": _object(
        {
            "name": {"type": "string"},
            "policy": {"type": "string"},
            "concurrency": {"type": ["integer", "null"]},
            "paused": {"type": "boolean"},
            "fair": {"type": "boolean"},
            "stats": {"oneOf": [_ref("QueueStats"), {"type": "null"}]},
        },
        ["name", "policy", "paused", "fair"],
    ),
    "QueuePaused": _object(
        {"queue": {"type": "string"}, "paused": {"type": "boolean"}}, ["queue", "paused"]
    ),
    "QueueFair": _object(
        {"queue": {"type": "string"}, "fair": {"type": "boolean"}}, ["queue", "fair"]
    ),
    "SendRequest": {
        **_object(
            {
                "queue": {"type": "string", "description": "The queue to send the job to."},
                "data": {**ANY, "description": "The job's payload: any JSON value."},
                "options": {
                    **_object(
                        {
                            "priority": {"type": "integer"},
                            "start_after": {
                                "type": ["number", "string"],
                                "description": "A delay in seconds, or a moment (ISO 8601; "
                                "UTC when it names no offset).",
                            },
                            "retry_limit": {"type": "integer", "minimum": 0},
                            "retry_delay": {"type": "number", "minimum": 0},
                            "retry_backoff": {"type": ["string", "boolean"]},
                            "retry_delay_max": {"type": "number"},
                            "expire_in": {"type": "number"},
                            "retention": {"type": "number"},
                            "singleton_key": {"type": "string"},
                            "singleton_seconds": {"type": "integer", "minimum": 1},
                            "unique_key": {"type": "string"},
                            "unique_mode": {"type": "string", "enum": ["keep", "replace"]},
                            "debounce_seconds": {"type": "number"},
                            "dead_letter": {"type": "string"},
                            "group_key": {"type": "string"},
                            "fair_key": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 255,
                                "description": "The key a fair queue takes turns by (a "
                                "tenant, a customer).",
                            },
                            "depends_on": {
                                "type": "array",
                                "items": {"type": "string", "format": "uuid"},
                            },
                            "on_dependency_failure": {"type": "string", "enum": ["fail", "run"]},
                            "on_complete": {"type": "string"},
                        }
                    ),
                    "additionalProperties": False,
                    "description": "The job options of send(); see the Python reference.",
                },
            },
            ["queue"],
        ),
        "additionalProperties": False,
    },
    "BulkRequest": _object(
        {
            "action": {"type": "string", "enum": list(ACTIONS)},
            "filter": {
                **_object(
                    {
                        "queue": {"type": "string"},
                        "state": {"type": "array", "items": {"type": "string", "enum": STATES}},
                        "older_than": {"type": "number", "minimum": 0},
                        "search": {"type": "string"},
                        "group_key": {"type": "string"},
                    }
                ),
                "additionalProperties": False,
                "description": "At least one criterion. state: among those the action applies "
                "to (default: all of them); older_than: created more than this many seconds "
                "ago; search: text in the payload (as JSON) or the id, ignoring case.",
            },
            "priority": {"type": "integer", "description": "The new priority (reprioritize)."},
            "dry_run": {"type": "boolean", "default": False},
        },
        ["action", "filter"],
    ),
    "BulkResult": _object(
        {
            "action": {"type": "string", "enum": list(ACTIONS)},
            "dry_run": {"type": "boolean"},
            "matched": COUNT,
            "affected": COUNT,
        },
        ["action", "dry_run", "matched", "affected"],
    ),
    "Schedule": _object(
        {
            "name": {"type": "string"},
            "cron": {"type": ["string", "null"]},
            "every": {"type": ["number", "null"]},
            "tz": {"type": "string"},
            "queue": {"type": "string"},
            "enabled": {"type": "boolean"},
            "last_tick": NULLABLE_TIME,
            "next_run": NULLABLE_TIME,
        },
        ["name", "queue", "enabled"],
    ),
    "Worker": {"type": "object", "description": "A running worker and its last heartbeat."},
}


def _response(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def openapi_document(root_path: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document, with the server URL where the app is mounted."""
    queue_filter = _query("queue", {"type": "string"}, "Only this queue.")
    paths: dict[str, Any] = {
        "/api/openapi.json": {"get": _op("Get the OpenAPI document", _json(ANY, "This document."))},
        "/api/queues": {
            "get": _op(
                "List queues",
                _json(
                    _object({"queues": {"type": "array", "items": _ref("Queue")}}, ["queues"]),
                    "Every queue with its counts by state.",
                ),
            )
        },
        "/api/queues/{name}": {
            "get": _op(
                "Get a queue",
                _json(_ref("Queue"), "The queue and its counts."),
                params=[QUEUE_NAME],
                errors={**ERRORS, **NOT_FOUND},
            )
        },
        "/api/queues/{name}/purge": {
            "post": _op(
                "Purge a queue",
                _json(
                    _object({"queue": {"type": "string"}, "purged": COUNT}),
                    "How many queued jobs were deleted.",
                ),
                params=[QUEUE_NAME],
                errors={**WRITE_ERRORS, **NOT_FOUND},
            )
        },
        "/api/queues/{name}/pause": {
            "post": _op(
                "Pause a queue",
                _json(_ref("QueuePaused"), "No worker starts its jobs until it is resumed."),
                params=[QUEUE_NAME],
                errors={**WRITE_ERRORS, **NOT_FOUND},
            )
        },
        "/api/queues/{name}/resume": {
            "post": _op(
                "Resume a queue",
                _json(_ref("QueuePaused"), "Its jobs run again."),
                params=[QUEUE_NAME],
                errors={**WRITE_ERRORS, **NOT_FOUND},
            )
        },
        "/api/queues/{name}/fair": {
            "post": _op(
                "Make a queue fair, or not",
                _json(
                    _ref("QueueFair"),
                    "Whether each fetch now takes the head job of each fair key in turn.",
                ),
                params=[QUEUE_NAME],
                errors={**WRITE_ERRORS, **NOT_FOUND},
                body=_object({"fair": {"type": "boolean", "default": True}}),
            )
        },
        "/api/jobs/bulk": {
            "post": _op(
                "Act on jobs by filter",
                _json(_ref("BulkResult"), "How many jobs matched, and how many were changed."),
                errors=WRITE_ERRORS,
                body=_ref("BulkRequest"),
                json_only=True,
            )
        },
        "/api/jobs": {
            "post": _op(
                "Send a job",
                _json(_ref("Job"), "The job sent (or the one already holding its unique key)."),
                errors=WRITE_ERRORS,
                body=_ref("SendRequest"),
                json_only=True,
            ),
            "get": _op(
                "List jobs",
                _json(JOBS_PAGE, "One page of jobs."),
                params=[
                    queue_filter,
                    _query(
                        "state",
                        {"type": "string"},
                        "A state, or several separated by commas: " + ", ".join(STATES) + ".",
                    ),
                    _query(
                        "since",
                        {"type": "string", "format": "date-time"},
                        "Only jobs created at or after this time (ISO 8601). Without it, "
                        "finished jobs created more than a day ago are not listed.",
                    ),
                    _query(
                        "search",
                        {"type": "string"},
                        "Text the payload (as JSON) or the id contains, ignoring case.",
                    ),
                    LIMIT,
                    OFFSET,
                    _query(
                        "order",
                        {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
                        "Oldest (asc) or newest (desc) first.",
                    ),
                    _query(
                        "after",
                        {"type": "string"},
                        "The next page: the `next` of the previous one.",
                    ),
                ],
            ),
        },
        "/api/jobs/{id}": {
            "get": _op(
                "Get a job",
                _json(_ref("Job"), "The job."),
                params=[JOB_ID],
                errors={**ERRORS, **NOT_FOUND},
            ),
            "delete": _op(
                "Delete a job",
                _json(
                    _object({"id": {"type": "string"}, "deleted": {"type": "boolean"}}),
                    "The job is gone.",
                ),
                params=[JOB_ID],
                errors={**WRITE_ERRORS, **NOT_FOUND, **CONFLICT},
            ),
        },
        "/api/jobs/{id}/retry": {
            "post": _op(
                "Retry a job",
                _json(_ref("Job"), "The job, queued again."),
                params=[JOB_ID],
                errors={**WRITE_ERRORS, **NOT_FOUND, **CONFLICT},
            )
        },
        "/api/jobs/{id}/cancel": {
            "post": _op(
                "Cancel a job",
                _json(_ref("Job"), "The cancelled job."),
                params=[JOB_ID],
                errors={**WRITE_ERRORS, **NOT_FOUND, **CONFLICT},
            )
        },
        "/api/dead": {
            "get": _op(
                "List dead letters",
                _json(JOBS_PAGE, "Failed jobs."),
                params=[queue_filter, LIMIT, OFFSET],
            )
        },
        "/api/dead/{id}/retry": {
            "post": _op(
                "Retry a dead letter",
                _json(_ref("Job"), "The job, queued with fresh attempts."),
                params=[JOB_ID],
                errors={**WRITE_ERRORS, **NOT_FOUND, **CONFLICT},
            )
        },
        "/api/dead/retry": {
            "post": _op(
                "Retry a queue's dead letters",
                _json(_object({"queue": {"type": "string"}, "retried": COUNT}), "How many."),
                params=[
                    _query(
                        "queue", {"type": "string"}, "The queue (required, here or in the body)."
                    )
                ],
                errors=WRITE_ERRORS,
                body=_object({"queue": {"type": "string"}}),
            )
        },
        "/api/dead/purge": {
            "post": _op(
                "Purge dead letters",
                _json(_object({"purged": COUNT}), "How many were deleted."),
                params=[
                    queue_filter,
                    _query(
                        "older_than",
                        {"type": "number", "minimum": 0},
                        "Only those that failed more than this many seconds ago.",
                    ),
                ],
                errors=WRITE_ERRORS,
                body=_object({"queue": {"type": "string"}, "older_than": {"type": "number"}}),
            )
        },
        "/api/schedules": {
            "get": _op(
                "List schedules",
                _json(
                    _object(
                        {"schedules": {"type": "array", "items": _ref("Schedule")}}, ["schedules"]
                    ),
                    "Every schedule with its next run.",
                ),
            )
        },
        "/api/workers": {
            "get": _op(
                "List workers",
                _json(
                    _object({"workers": {"type": "array", "items": _ref("Worker")}}, ["workers"]),
                    "Workers with a live heartbeat row.",
                ),
            )
        },
        "/api/stats": {
            "get": _op(
                "Get stats",
                _json(
                    _object(
                        {
                            "time": {"type": "string", "format": "date-time"},
                            "queues": {"type": "array", "items": _ref("QueueStats")},
                            "totals": {"type": "object", "additionalProperties": COUNT},
                        },
                        ["time", "queues", "totals"],
                    ),
                    "Counts by queue and state, for the overview.",
                ),
            )
        },
        "/api/stats/series": {
            "get": _op(
                "Get stats series",
                _json(
                    _object(
                        {
                            "queue": {"type": ["string", "null"]},
                            "minutes": {"type": "integer"},
                            "buckets": {"type": "array", "items": _ref("StatsMinute")},
                        },
                        ["queue", "minutes", "buckets"],
                    ),
                    "One bucket per minute, oldest first, the current minute last: jobs "
                    "completed, failed, cancelled and retried in it, the wait before their last "
                    "attempt (p50, p95, in milliseconds), and the backlog sampled in it.",
                ),
                params=[
                    _query("queue", {"type": "string"}, "One queue; all of them summed if absent."),
                    _query(
                        "minutes",
                        {"type": "integer", "minimum": 1, "maximum": 1440, "default": 60},
                        "How many minutes, up to the current one.",
                    ),
                ],
                errors={**ERRORS, **NOT_FOUND},
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Conveyor admin API",
            "version": "1",
            "description": "Inspect and manage Conveyor's queues, jobs, dead letters, schedules "
            "and workers. Authenticate with `Authorization: Bearer <token>`.",
        },
        "servers": [{"url": root_path or "/"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "conveyor_session"},
            },
            "responses": {
                "BadRequest": _response("Invalid input: a bad filter, id or body."),
                "Unauthorized": _response("No bearer token or dashboard session."),
                "Forbidden": _response("Cross-site, or a cookie-borne write without CSRF token."),
                "NotFound": _response("No such job or queue."),
                "Conflict": _response("The job's state does not allow this action."),
                "Unavailable": _response("The database cannot be reached."),
            },
        },
    }
