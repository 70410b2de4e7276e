"""The public surface: names are fixed by SPEC §0, so a change here is a deliberate decision."""

from __future__ import annotations

import inspect

import conveyor
from conveyor import Conveyor
from conveyor._store.queries import parse, queries

EXPECTED_ALL = [
    "AttemptLost", "BulkResult", "ConfigurationError", "Conveyor", "ConveyorError", "DuplicateJob",
    "Fail", "FrozenClock", "InvalidOption", "InvalidQueueName", "Job", "JobNotFound", "JobState",
    "JobStateError",
    "MigrationError", "PayloadError", "PayloadTooLarge", "Queue", "QueueNotFound", "QueuePolicy",
    "QueueStats", "Retry", "Schedule", "ScheduleNotFound", "SchemaOutOfDate", "UnknownOption",
    "ValidationError", "WorkerInfo",
]  # fmt: skip

IO_METHODS = [
    "send", "send_batch", "get_job", "list_jobs", "cancel", "retry", "create_queue",
    "update_queue", "delete_queue", "purge_queue", "get_queue", "list_queues", "queue_stats",
    "queue_series",
    "migrate", "migration_status", "migration_sql", "close", "schedule", "unschedule",
    "get_schedule", "list_schedules", "schedule_crontab", "wait_for", "retry_dead",
    "retry_dead_all", "delete_job", "list_dead", "purge_dead", "list_workers", "maintain",
    "health", "diagnose", "pause_queue", "resume_queue", "bulk_jobs",
]  # fmt: skip


def test_all_is_pinned() -> None:
    assert sorted(conveyor.__all__) == sorted(EXPECTED_ALL)
    for name in conveyor.__all__:
        assert hasattr(conveyor, name)


def test_every_io_method_has_an_async_twin_with_the_same_parameters() -> None:
    for name in IO_METHODS:
        sync = getattr(Conveyor, name)
        twin = getattr(Conveyor, f"{name}_async")
        assert not inspect.iscoroutinefunction(sync), name
        assert inspect.iscoroutinefunction(twin), name
        assert list(inspect.signature(sync).parameters) == list(
            inspect.signature(twin).parameters
        ), name
        assert sync.__doc__ and twin.__doc__


def test_queries_render_the_schema_as_an_identifier() -> None:
    rendered = queries("my_schema")
    assert '"my_schema".job' in rendered["job_get"].sql
    assert "{schema" not in "".join(q.sql for q in rendered.values())


def test_parse_splits_named_statements() -> None:
    text = "-- name: a :one\nSELECT 1;\n\n-- about b\n-- name: b :exec\nSELECT 2;\n"
    assert parse(text) == [("a", "one", "SELECT 1"), ("b", "exec", "SELECT 2")]


def test_job_fetch_returns_the_columns_in_the_order_of_job_fields() -> None:
    import dataclasses
    import re

    from conveyor._store.migrations import migrations
    from conveyor.models import Job

    sql = migrations()[0].template
    body = sql[sql.index("CREATE FUNCTION {schema}.as_fetched(") :]
    returned = re.findall(r"j\.(\w+)", body[body.index("SELECT") : body.index("$fn$;")])
    marker = "CREATE TYPE {schema}.job_fetched AS ("
    kind = sql[sql.index(marker) + len(marker) :]
    declared = [column.split()[0] for column in kind[: kind.index(");")].split(",")]
    # The fields after _runtime (the dependencies' results) are filled apart from the fetch.
    names = [f.name for f in dataclasses.fields(Job)]
    fields = names[: names.index("_runtime")]
    assert returned == fields
    assert declared[: len(fields)] == fields
