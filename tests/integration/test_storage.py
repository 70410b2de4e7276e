"""The history's layout against a real PostgreSQL: retention 0 keeps no history while wait_for
still gets the outcome; a schema holding history under the layout before 0012 migrates with
nothing lost; the SQL of the previous release still reads and writes the history; doctor shows
the partitions' runway and the leader's failures."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

import conveyor._store.migrate as migrate_module
import conveyor._store.migrations as migrations_module
from conveyor import Conveyor, Fail, Job, JobState
from conveyor.errors import InvalidOption, JobNotFound, MigrationChecksumMismatch

SHIPPED = migrations_module.migrations()


def scalar(dsn: str, query: str, *params: Any) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def kept(dsn: str, schema: str, job_id: object) -> int:
    """How many rows of the archive and the dead letters hold the job."""
    return int(scalar(dsn, f"SELECT count(*) FROM {schema}.job_history WHERE id = %s", job_id))


# -- retention 0: delete-on-complete ------------------------------------------------------------


def test_a_completed_job_with_retention_0_keeps_no_history(
    app: Conveyor, conveyor_dsn: str
) -> None:
    app.job("fleeting", lambda job: {"seen": job.data})
    app.create_queue("fleeting-queue", retention=0)
    app.job("fleeting-queue", lambda job: None)
    own = app.send("fleeting", 1, retention=0)
    by_queue = app.send("fleeting-queue", 2)
    kept_job = app.send("fleeting", 3)
    assert app.drain() == 3
    for gone in (own, by_queue):
        with pytest.raises(JobNotFound):
            app.get_job(gone)
        assert kept(conveyor_dsn, app.schema, gone) == 0
    assert app.get_job(kept_job).result == {"seen": 3}
    assert app.get_queue("fleeting-queue").retention == 0


def test_a_failed_job_with_retention_0_is_still_a_dead_letter(app: Conveyor) -> None:
    def fail(job: Job) -> None:
        raise Fail("no")

    app.job("doomed", fail)
    dead = app.send("doomed", {}, retention=0)
    app.drain()
    assert app.get_job(dead).state is JobState.FAILED
    assert [j.id for j in app.list_dead()] == [dead]


def test_retention_below_0_is_still_refused(app: Conveyor) -> None:
    with pytest.raises(InvalidOption, match="retention"):
        app.send("q", {}, retention=-1)
    with pytest.raises(InvalidOption, match="retention"):
        app.create_queue("q", retention=-1)


async def test_wait_for_gets_the_outcome_of_a_job_kept_in_no_history(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    app_async.job("fleeting", lambda job: {"double": job.data * 2})
    job_id = await app_async.send_async("fleeting", 21, retention=0)
    waiting = asyncio.create_task(app_async.wait_for_async(job_id, timeout=30))
    await asyncio.sleep(0.3)  # the wait listens and has read the job as queued
    assert not waiting.done()
    assert await app_async.drain_async() == 1
    job = await asyncio.wait_for(waiting, 30)
    assert job.id == job_id
    assert job.state is JobState.COMPLETED
    assert job.result == {"double": 42}
    assert job.attempt == 1 and job.finished_at is not None and job.data is None
    assert kept(conveyor_dsn, app_async.schema, job_id) == 0


def test_a_sync_wait_gets_it_too(app: Conveyor) -> None:
    app.job("fleeting", lambda job: "done")
    job_id = app.send("fleeting", None, retention=0)
    got: list[Job] = []

    async def later() -> None:
        await asyncio.sleep(0.3)
        await app.drain_async()

    thread = threading.Thread(target=lambda: got.append(app.wait_for(job_id, timeout=30)))
    thread.start()
    asyncio.run(later())
    thread.join(30)
    assert got and got[0].result == "done" and got[0].state is JobState.COMPLETED


async def test_an_outcome_too_large_for_a_notification_is_archived_for_a_while(
    app_async: Conveyor, conveyor_dsn: str
) -> None:
    big = "x" * 5000
    app_async.job("fleeting", lambda job: big)
    # The schema of this test process was migrated when the session began; its minute-wide
    # partitions reach 10 minutes ahead of then, as a maintenance pass keeps them from now.
    await app_async.maintain_async()
    job_id = await app_async.send_async("fleeting", None, retention=0)
    waiting = asyncio.create_task(app_async.wait_for_async(job_id, timeout=30))
    await asyncio.sleep(0.3)
    await app_async.drain_async()
    job = await asyncio.wait_for(waiting, 30)
    assert job.result == big
    drop_at = scalar(
        conveyor_dsn, f"SELECT drop_at FROM {app_async.schema}.job_archive WHERE id = %s", job_id
    )
    assert drop_at < datetime.now(UTC) + timedelta(minutes=2)  # the partition that ends first


def test_a_job_with_retention_0_still_releases_its_dependants(
    app: Conveyor, conveyor_dsn: str
) -> None:
    app.job("child", lambda job: {"part": job.data})
    app.job("parent", lambda job: sorted(r["part"] for r in job.results.values()))
    children = [app.send("child", i, retention=0) for i in (1, 2)]
    parent = app.send("parent", None, depends_on=children)
    app.drain()
    assert app.get_job(parent).result == [1, 2]
    # Kept (briefly) because the parent needed them: dropped with the partition that ends first.
    assert all(kept(conveyor_dsn, app.schema, c) == 1 for c in children)


# -- migrating a schema that holds history under the layout before 0012 ---------------------


@pytest.fixture
def old_layout(
    conveyor_dsn: str, scratch_schema: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A schema migrated up to 0005 (this release's code reads it: the SQL is the same)."""
    monkeypatch.setattr(migrations_module, "migrations", lambda: SHIPPED[:5])
    monkeypatch.setattr(migrate_module, "migrations", lambda: SHIPPED[:5])
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        app.migrate()
    monkeypatch.undo()
    yield scratch_schema


def fill_old_history(dsn: str, schema: str) -> None:
    """Finished jobs of every kind: completed (kept 60 s and long ago due, or 30 days),
    cancelled, failed with errors, one with a completion hook, one with a large payload."""
    now = datetime.now(UTC)
    columns = (
        "id, queue, state, data, priority, run_at, attempt, retry_limit, retry_delay, "
        "retry_backoff, retry_delay_max, expire_in, retention, singleton_key, dead_letter, "
        "group_key, depends_on, worker_id, created_at, started_at, finished_at, result, errors, "
        "progress"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"INSERT INTO {schema}.queue (name) VALUES ('old'), ('hooks')")
        for state, retention, finished, n in (
            ("completed", 60, now - timedelta(days=2), 300),
            ("completed", 30 * 86400, now - timedelta(hours=1), 300),
            ("cancelled", 3600, now - timedelta(minutes=5), 50),
            ("failed", 604800, now - timedelta(days=1), 50),
        ):
            conn.execute(
                f"INSERT INTO {schema}.job_history ({columns}) "
                "SELECT gen_random_uuid(), 'old', %(state)s, jsonb_build_object('i', g), g %% 3, "
                "%(at)s - interval '1 minute', 1 + g %% 2, 2, 5, 'exponential', 3600, 900, "
                "%(retention)s, 'k' || g, 'dl', 'grp', ARRAY[gen_random_uuid()], "
                "gen_random_uuid(), %(at)s - interval '2 minutes', %(at)s - interval '1 minute', "
                "%(at)s, jsonb_build_object('r', g), "
                "jsonb_build_array(jsonb_build_object('attempt', 1, 'message', 'e' || g)), "
                "jsonb_build_object('percent', g %% 100) FROM generate_series(1, %(n)s) g",
                {"state": state, "at": finished, "retention": retention, "n": n},
            )
        conn.execute(
            f"INSERT INTO {schema}.job_hook (job_id, on_complete) "
            f"SELECT id, 'hooks' FROM {schema}.job_history LIMIT 5"
        )


def history(dsn: str, schema: str) -> dict[Any, dict[str, Any]]:
    """Every finished job, as SELECT * FROM job_history gives it, by id."""
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return {r["id"]: r for r in conn.execute(f"SELECT * FROM {schema}.job_history")}


def legacy(dsn: str, schema: str) -> Any:
    return scalar(dsn, "SELECT to_regclass(%s)", f"{schema}.job_history_legacy")


def views(dsn: str, schema: str) -> list[Any]:
    """The definitions of the history's views, with the schema's name taken out."""
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c "
            "WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'v' ORDER BY 1",
            (schema,),
        ).fetchall()
    return [(name, text.replace(schema + ".", "")) for name, text in found]


def test_history_under_the_old_layout_migrates_with_nothing_lost(
    old_layout: str, conveyor_dsn: str
) -> None:
    schema = old_layout
    fill_old_history(conveyor_dsn, schema)
    before = history(conveyor_dsn, schema)
    assert len(before) == 700
    with Conveyor(conveyor_dsn, schema=schema) as app:
        assert app.migrate() == [f"{m.version:04d}_{m.name}" for m in SHIPPED[5:]]
        assert SHIPPED[11].name == "history"
        # Nothing was copied: the old table is read through the views until it is moved.
        assert legacy(conveyor_dsn, schema) is not None
        assert scalar(conveyor_dsn, f"SELECT count(*) FROM {schema}.job_archive") == 0

        def readable(stride: int = 1) -> None:
            # 0009 added meta and 0015 fair_key (empty on rows already finished); every other
            # column is as it was. get_job is asked for every stride-th row (every row once at
            # the start and at the end, a sample of each kind between moves).
            after = history(conveyor_dsn, schema)
            assert {(r.pop("meta"), r.pop("fair_key")) for r in after.values()} == {(None, None)}
            assert after == before
            for job_id, row in list(before.items())[::stride]:
                job = app.get_job(job_id)
                assert (job.state, job.data, job.result, job.errors, job.finished_at) == (
                    row["state"], row["data"], row["result"], row["errors"], row["finished_at"]
                )  # fmt: skip
            assert sorted(j.id for j in app.list_dead(limit=1000)) == sorted(
                i for i, r in before.items() if r["state"] == "failed"
            )
            assert sorted(
                j.id for j in app.list_jobs(queue="old", limit=1000, since=timedelta(days=3))
            ) == sorted(before)

        readable()
        # Doctor shows the old table until it is gone.
        drift = [f.message for f in app.diagnose() if f.check == "schema"]
        assert any("job_history_legacy" in m for m in drift), drift
        [moving] = [
            f.message
            for f in app.diagnose()
            if f.check == "history" and "still being moved" in f.message
        ]
        assert "(700 rows left)" in moving, moving
        # The maintenance leader moves the rows in batches, each readable once in between.
        store = app._stores.store()
        moved = []
        while legacy(conveyor_dsn, schema) is not None:
            moved.append(store.history_legacy_move(None, 300))
            readable(stride=23)
        assert moved == [300, 300, 100, 0]
        readable()
    assert scalar(conveyor_dsn, f"SELECT count(*) FROM {schema}.job_archive") == 650
    assert scalar(conveyor_dsn, f"SELECT count(*) FROM {schema}.job_dead") == 50
    # The moves fired no completion hook a second time, and kept the hooks with their jobs.
    assert scalar(conveyor_dsn, f"SELECT count(*) FROM {schema}.job") == 0
    assert scalar(conveyor_dsn, f"SELECT count(*) FROM {schema}.job_hook") == 5
    # Each row sits in a partition that ends after its finish time plus retention (a row
    # already due in the first one), so none leaves before its time.
    early = scalar(
        conveyor_dsn,
        f"SELECT count(*) FROM {schema}.job_archive a JOIN {schema}.archive_partition p "
        "ON a.drop_at >= p.lo AND a.drop_at < p.hi "
        "WHERE p.hi < least(a.finished_at + make_interval(secs => a.retention), now())",
    )
    assert early == 0
    # Once moved, the schema is the one a new schema gets: same views, nothing left over.
    fresh = schema + "_fresh"
    try:
        with Conveyor(conveyor_dsn, schema=fresh) as app:
            app.migrate()
        assert legacy(conveyor_dsn, fresh) is None
        assert views(conveyor_dsn, schema) == views(conveyor_dsn, fresh)
    finally:
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {fresh} CASCADE")
    with Conveyor(conveyor_dsn, schema=schema) as app:
        drift = [(f.severity, f.message) for f in app.diagnose() if f.check == "schema"]
        assert [severity for severity, _ in drift] == ["ok"], drift
        assert not [f for f in app.diagnose() if "still being moved" in f.message]


def test_a_schema_migrated_by_the_first_0012_ends_as_a_new_one(
    old_layout: str, conveyor_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first released 0012 (kept in tests/integration/data) copied the history: a schema it
    migrated takes this release's later files and then differs from a new schema in nothing
    doctor compares, with every row readable."""
    schema = old_layout
    fill_old_history(conveyor_dsn, schema)
    before = history(conveyor_dsn, schema)
    text = (Path(__file__).parent / "data" / "0012_history_first.sql").read_text("utf-8")
    first = migrations_module.Migration(12, "history", text)
    assert first.checksum in migrations_module.REWRITTEN[12]
    monkeypatch.setattr(migrations_module, "migrations", lambda: (*SHIPPED[:11], first))
    monkeypatch.setattr(migrate_module, "migrations", lambda: (*SHIPPED[:11], first))
    with Conveyor(conveyor_dsn, schema=schema) as app:
        app.migrate()
    monkeypatch.undo()
    assert legacy(conveyor_dsn, schema) is None
    with Conveyor(conveyor_dsn, schema=schema) as app:
        assert app.migrate() == [f"{m.version:04d}_{m.name}" for m in SHIPPED[12:]]
        drift = [(f.severity, f.message) for f in app.diagnose() if f.check == "schema"]
        assert [severity for severity, _ in drift] == ["ok"], drift
        assert app.maintain()["legacy_moved"] == 0
    after = history(conveyor_dsn, schema)
    assert {(r.pop("meta"), r.pop("fair_key")) for r in after.values()} == {(None, None)}
    assert after == before


def test_the_migration_holds_no_lock_for_the_history_s_size(
    old_layout: str, conveyor_dsn: str
) -> None:
    """An ack of the previous release runs while 0012 is under way: it waits for the rename, a
    moment, never for a copy. Here it writes through job_history (as those acks did before
    ack_jobs was replaced) while the old table is still being moved."""
    schema = old_layout
    fill_old_history(conveyor_dsn, schema)
    with Conveyor(conveyor_dsn, schema=schema) as app:
        app.migrate()
        job_id = app.send("old", {"late": True}, start_after=60)
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(
            f"WITH moved AS (DELETE FROM {schema}.job WHERE id = %s RETURNING *) "
            f"INSERT INTO {schema}.job_history SELECT id, queue, 'cancelled', data, priority, "
            "run_at, attempt, retry_limit, retry_delay, retry_backoff, retry_delay_max, "
            "expire_in, retention, singleton_key, singleton_seconds, unique_key, dead_letter, "
            "group_key, depends_on, worker_id, created_at, started_at, now(), result, errors, "
            "progress FROM moved",
            (job_id,),
        )
        # A legacy row deleted through the view, as the previous release retries a dead letter.
        old = conn.execute(
            f"SELECT id FROM {schema}.job_history_legacy WHERE state = 'failed' LIMIT 1"
        ).fetchone()
        assert old is not None
        gone = conn.execute(
            f"DELETE FROM {schema}.job_history WHERE id = %s RETURNING id", (old[0],)
        ).fetchall()
        assert gone == [(old[0],)]
    assert kept(conveyor_dsn, schema, job_id) == 1
    assert kept(conveyor_dsn, schema, old[0]) == 0
    assert len(history(conveyor_dsn, schema)) == 700


def test_deleting_a_queue_deletes_its_history_still_in_the_old_table(
    old_layout: str, conveyor_dsn: str
) -> None:
    schema = old_layout
    fill_old_history(conveyor_dsn, schema)
    with Conveyor(conveyor_dsn, schema=schema) as app:
        app.migrate()
        app.send("old", {"queued": True})
        assert app.delete_queue("old") == 701
        assert legacy(conveyor_dsn, schema) is not None  # not moved yet
        assert scalar(conveyor_dsn, f"SELECT count(*) FROM {schema}.job_history") == 0
        assert app.list_jobs(queue="old", since=timedelta(days=3)) == []


def test_a_schema_that_applied_the_first_0012_is_current(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    """0012 as first released copied the history; a schema it migrated is what the rewritten
    file leaves, so its checksum is accepted. Any other change to a released file is not."""
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        app.migrate()
        first = next(iter(migrations_module.REWRITTEN[12]))
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(
                f"UPDATE {scratch_schema}.migration SET checksum = %s WHERE version = 12", (first,)
            )
        assert app.migrate() == []
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(
                f"UPDATE {scratch_schema}.migration SET checksum = 'edited' WHERE version = 12"
            )
        with pytest.raises(MigrationChecksumMismatch):
            app.migrate()


def test_the_previous_releases_sql_still_writes_the_history(
    app: Conveyor, conveyor_dsn: str
) -> None:
    """What workers of the release before 0012 send (cancel, retry, delete): INSERT and DELETE
    on job_history, now a view."""
    s = app.schema
    cancelled = app.send("old-release", {"a": 1}, start_after=60)
    failed = app.send("old-release", {"a": 2}, start_after=60)
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        for job_id, state in ((cancelled, "cancelled"), (failed, "failed")):
            row = conn.execute(
                f"WITH moved AS (DELETE FROM {s}.job WHERE id = %s RETURNING *) "
                f"INSERT INTO {s}.job_history SELECT id, queue, %s, data, priority, run_at, "
                "attempt, retry_limit, retry_delay, retry_backoff, retry_delay_max, expire_in, "
                "retention, singleton_key, singleton_seconds, unique_key, dead_letter, "
                "group_key, depends_on, worker_id, created_at, started_at, now(), result, "
                "errors, progress FROM moved RETURNING id, state",
                (job_id, state),
            ).fetchone()
            assert row == (job_id, state)
    assert app.get_job(cancelled).state is JobState.CANCELLED
    assert [j.id for j in app.list_dead()] == [failed]
    assert kept(conveyor_dsn, s, cancelled) == 1
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        gone = conn.execute(
            f"DELETE FROM {s}.job_history WHERE id = ANY (%s) RETURNING id", ([cancelled, failed],)
        ).fetchall()
    assert sorted(r[0] for r in gone) == sorted([cancelled, failed])
    for job_id in (cancelled, failed):
        with pytest.raises(JobNotFound):
            app.get_job(job_id)


def test_redrive_purge_and_delete_work_on_the_new_tables(app: Conveyor) -> None:
    def fail(job: Job) -> None:
        raise Fail("no")

    app.job("doomed", fail)
    dead = [app.send("doomed", i) for i in range(3)]
    app.drain()
    assert app.retry_dead(dead[0]).state is JobState.CREATED
    assert app.purge_dead(queue="doomed") == 2
    app.drain()
    assert app.retry_dead_all("doomed") == 1
    assert app.delete_queue("doomed") == 1
    cancelled = app.send("later", {}, start_after=60)
    app.cancel(cancelled)
    assert app.retry(cancelled).state is JobState.CREATED
    app.delete_job(cancelled)
    with pytest.raises(JobNotFound):
        app.get_job(cancelled)


# -- doctor -----------------------------------------------------------------------------------


def history_check(app: Conveyor) -> list[tuple[str, str]]:
    return [(f.severity, f.message) for f in app.diagnose() if f.check == "history"]


def test_doctor_shows_the_runway_the_drops_and_the_last_failure(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    s = scratch_schema
    with Conveyor(conveyor_dsn, schema=s) as app:
        app.migrate()
        [(severity, message)] = history_check(app)
        assert severity == "ok" and "dropped (none yet)" in message, message
        # Partitions that ended an hour ago, not dropped: no leader ran.
        scalar(conveyor_dsn, f"SELECT {s}.archive_extend(600, now() - interval '1 hour')")
        app.create_queue("kept-long", retention=timedelta(days=40))
        found = history_check(app)
        ended = [m for sev, m in found if sev == "warning" and "ended and wait" in m]
        assert len(ended) == 1 and ended[0].endswith("(last drop: never)"), found
        n = int(ended[0].split()[0])
        assert n >= 10
        assert any(
            sev == "warning" and "need 40.0d: jobs kept longer leave" in msg for sev, msg in found
        ), found
        counts = app.maintain()
        assert counts["partitions_dropped"] == n and counts["partitions_created"] > 0
        [(severity, message)] = history_check(app)
        assert severity == "ok" and f"; {n} dropped (the last" in message, message
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(
                f"UPDATE {s}.archive_status SET failed_at = now(), failure = 'lock timeout'"
            )
        [(severity, message)] = history_check(app)
        assert severity == "warning" and message.endswith("ago: lock timeout"), message
        app.maintain()  # a pass that succeeds afterwards clears it
        [(severity, _)] = history_check(app)
        assert severity == "ok"


def test_a_least_privilege_role_keeps_the_partitions_too(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    """Workers that run as a role with only the grants of docs/security.md own no table: the
    runway and the drops go through the owner's functions."""
    s = scratch_schema
    role = f"conveyor_storage_{os.getpid()}"
    doc = (Path(__file__).parents[2] / "docs" / "security.md").read_text(encoding="utf-8")
    grants = re.search(r"```sql\n(.*?)```", doc, re.S)
    assert grants is not None
    with Conveyor(conveyor_dsn, schema=s) as owner:
        owner.migrate()
    scalar(conveyor_dsn, f"SELECT {s}.archive_extend(600, now() - interval '1 hour')")
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        block = grants.group(1).replace("SCHEMA conveyor", f"SCHEMA {s}")
        conn.execute(block.replace("app_worker", role))  # type: ignore[arg-type]
    try:
        dsn = psycopg.conninfo.make_conninfo(conveyor_dsn, user=role)
        with Conveyor(dsn, schema=s) as app:
            app.create_queue("kept-long", retention=timedelta(days=40))
            counts = app.maintain()
            assert counts["partitions_dropped"] >= 10 and counts["partitions_created"] > 0
            [finding] = [f for f in app.diagnose() if f.check == "history"]
            assert finding.severity == "ok", finding
    finally:
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
