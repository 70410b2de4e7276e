"""app.health() and `conveyor health` against a real PostgreSQL: database, schema, live workers
and queue waits, with the probe's exit codes (0 healthy, 1 unhealthy, 3 unreachable)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from click.testing import CliRunner

from conveyor import Conveyor, FrozenClock
from conveyor._store.worker_store import WorkerStore
from conveyor.cli import main
from conveyor.errors import InvalidOption
from conveyor.models import QueueHealth

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nothing"


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC))


@pytest.fixture
def timed(conveyor_dsn: str, conveyor_schema: str, clock: FrozenClock) -> Iterator[Conveyor]:
    with Conveyor(conveyor_dsn, schema=conveyor_schema, clock=clock) as app:
        yield app


def probe(dsn: str, schema: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--dsn", dsn, "--schema", schema, "health", *args])
    return result.exit_code, result.output


def test_a_fresh_schema_is_healthy(app: Conveyor, conveyor_dsn: str) -> None:
    report = app.health()
    assert report.ok and report.database and report.schema_current
    assert (report.workers, report.queues, report.problems) == (0, (), ())
    code, out = probe(conveyor_dsn, app.schema, "--json")
    assert code == 0
    assert json.loads(out)["ok"] is True


def test_queue_depth_and_the_longest_wait(
    timed: Conveyor, clock: FrozenClock, conveyor_dsn: str
) -> None:
    timed.send("mail", {})
    timed.send("mail", {})
    timed.send("mail", {}, start_after=600)  # not runnable yet: no wait
    clock.advance(90)
    report = timed.health(max_wait=120)
    assert report.ok
    [mail] = report.queues
    assert mail == QueueHealth("mail", 3, pytest.approx(90, abs=1))
    clock.advance(60)
    report = timed.health(max_wait=120)
    assert not report.ok
    assert report.problems == ("queue mail: oldest runnable job waited 150s, over 120s",)
    # The CLI's app reads the database's clock: the jobs have waited only a moment there.
    code, out = probe(conveyor_dsn, timed.schema, "--max-wait", "0")
    assert code == 1
    assert "mail" in out and "problem: queue mail: oldest runnable job waited" in out


def test_too_few_live_workers_is_unhealthy(app: Conveyor, conveyor_dsn: str) -> None:
    assert not app.health(min_workers=1).ok
    code, out = probe(conveyor_dsn, app.schema, "--min-workers", "1")
    assert code == 1
    assert "problem: 0 live worker(s), fewer than 1" in out

    async def register() -> None:
        store = WorkerStore(conveyor_dsn, app.schema, min_size=0, max_size=1)
        try:
            await store.worker_register(uuid.uuid4(), "host", 1, ["mail"], 1)
        finally:
            await store.close()

    asyncio.run(register())
    assert app.health(min_workers=1).workers == 1
    assert probe(conveyor_dsn, app.schema, "--min-workers", "1")[0] == 0
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {app.schema}.worker SET heartbeat_at = now() - interval '1 minute'")
    report = app.health(min_workers=1, stale_after=30)
    assert (report.ok, report.workers) == (False, 0)


def test_a_schema_that_is_behind(conveyor_dsn: str, scratch_schema: str) -> None:
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        report = app.health()
        assert (report.ok, report.database, report.schema_current) == (False, True, False)
        assert report.pending_migrations[0] == "0001_initial"
        assert report.problems[0].startswith("schema is behind: pending migrations 0001_initial")
    assert probe(conveyor_dsn, scratch_schema)[0] == 1


def test_an_unreachable_database_is_reported_not_raised() -> None:
    with Conveyor(UNREACHABLE) as app:
        report = app.health()
    assert (report.ok, report.database) == (False, False)
    assert "Connection refused" in report.problems[0] or "connect" in report.problems[0]
    code, out = probe(UNREACHABLE, "conveyor", "--json")
    assert code == 3
    assert json.loads(out)["database"] is False


def test_options_are_validated(app: Conveyor, conveyor_dsn: str) -> None:
    with pytest.raises(InvalidOption):
        app.health(max_wait=-1)
    with pytest.raises(InvalidOption):
        app.health(min_workers=-1)
    assert probe(conveyor_dsn, app.schema, "--max-wait", "-5")[0] == 2
