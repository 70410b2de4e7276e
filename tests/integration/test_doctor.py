"""app.diagnose() and `conveyor doctor` against a real PostgreSQL, each finding provoked: schema
drift and invalid indexes, a changed migration, an open transaction, orphaned active jobs, silent
workers and a waiting job nothing will release."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid

import psycopg
from click.testing import CliRunner

from conveyor import Conveyor
from conveyor._store.worker_store import WorkerStore
from conveyor.cli import main
from conveyor.models import Finding


def by_check(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


def doctor(dsn: str, schema: str) -> tuple[int, list[dict[str, str]]]:
    result = CliRunner().invoke(main, ["--dsn", dsn, "--schema", schema, "doctor", "--json"])
    return result.exit_code, json.loads(result.output)


def test_a_healthy_schema_has_only_ok_findings(app: Conveyor, conveyor_dsn: str) -> None:
    app.maintain()  # as a worker's maintenance keeps it: the history's runway from now on
    findings = app.diagnose()
    checks = [
        "schema", "bloat", "history", "transactions", "jobs", "workers", "schedules", "notify"
    ]  # fmt: skip
    assert [f.check for f in findings] == checks
    assert {f.severity for f in findings if f.check != "bloat"} == {"ok"}, findings
    with psycopg.connect(conveyor_dsn) as conn:
        autovacuum = conn.execute("SELECT current_setting('autovacuum')::boolean").fetchone()
    [bloat] = by_check(findings, "bloat")
    if autovacuum == (True,):
        assert bloat.severity == "ok"
    else:  # as on the CI server, whose autovacuum is off
        assert (bloat.severity, bloat.fix) == (
            "warning", "set autovacuum = on in postgresql.conf and reload"
        )  # fmt: skip
    assert by_check(findings, "notify")[0].message.startswith("LISTEN/NOTIFY works")
    code, found = doctor(conveyor_dsn, app.schema)
    assert code == 0
    assert [f["check"] for f in found] == checks
    table = CliRunner().invoke(main, ["--dsn", conveyor_dsn, "--schema", app.schema, "doctor"])
    assert table.exit_code == 0
    assert "schema is current and matches its migrations" in table.output
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {app.schema}.worker SET (autovacuum_enabled = false)")
        try:
            bloat = by_check(app.diagnose(), "bloat")
        finally:
            conn.execute(f"ALTER TABLE {app.schema}.worker RESET (autovacuum_enabled)")
    assert Finding(
        "warning", "bloat", "autovacuum is disabled on table worker",
        "ALTER TABLE worker RESET (autovacuum_enabled)",
    ) in bloat  # fmt: skip


def test_drift_and_invalid_indexes(conveyor_dsn: str, scratch_schema: str) -> None:
    s = scratch_schema
    with Conveyor(conveyor_dsn, schema=s) as app:
        app.migrate()
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(f"DROP INDEX {s}.job_dead_finished_idx")
            conn.execute(f"CREATE INDEX job_extra_idx ON {s}.job (created_at)")
            conn.execute(f"CREATE TABLE {s}.extra (x integer)")
            conn.execute(f"INSERT INTO {s}.extra VALUES (1), (1)")
            # The failed build leaves the index behind, invalid: what doctor must report.
            with contextlib.suppress(psycopg.errors.UniqueViolation):
                conn.execute(f"CREATE UNIQUE INDEX CONCURRENTLY extra_x_idx ON {s}.extra (x)")
        findings = by_check(app.diagnose(), "schema")
    messages = {(f.severity, f.message) for f in findings}
    assert (
        "error",
        "missing: index CREATE INDEX job_dead_finished_idx ON SCHEMA.job_dead USING btree "
        "(finished_at)",
    ) in messages
    assert (
        "warning",
        "not built by the migrations: index CREATE INDEX job_extra_idx ON SCHEMA.job USING btree "
        "(created_at)",
    ) in messages
    assert ("warning", "not built by the migrations: table extra") in messages
    assert ("error", "index extra_x_idx is invalid (a concurrent build failed)") in messages
    assert doctor(conveyor_dsn, s)[0] == 1
    with psycopg.connect(conveyor_dsn) as conn:  # the reference schema was rolled back
        left = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE %s", (f"{s[:40]}_doctor_%",)
        ).fetchone()
    assert left == (0,)


def test_a_changed_migration_and_a_schema_that_is_behind(
    conveyor_dsn: str, scratch_schema: str
) -> None:
    with Conveyor(conveyor_dsn, schema=scratch_schema) as app:
        [behind] = by_check(app.diagnose(), "schema")
        assert behind.severity == "error"
        assert behind.message.startswith("pending migrations: 0001_initial")
        app.migrate()
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE {scratch_schema}.migration SET checksum = 'x' WHERE version = 1")
        [changed] = by_check(app.diagnose(), "schema")
    assert changed.severity == "error"
    assert "0001_initial changed after it was applied" in changed.message
    assert changed.fix == "run the release that applied it, or restore the file as released"


def test_an_open_transaction_is_listed(app: Conveyor, conveyor_dsn: str) -> None:
    async def oldest() -> list[dict[str, object]]:
        store = WorkerStore(conveyor_dsn, app.schema, min_size=0, max_size=1)
        try:
            return await store.doctor_old_transactions()
        finally:
            await store.close()

    with psycopg.connect(conveyor_dsn, application_name="doctor-test-holder") as holder:
        holder.execute("SELECT txid_current()")
        pid = holder.info.backend_pid
        rows = asyncio.run(oldest())
    mine = [r for r in rows if r["pid"] == pid]
    assert mine and mine[0]["application"] == "doctor-test-holder"
    assert mine[0]["state"] == "idle in transaction"


async def test_orphaned_jobs_and_silent_workers(app_async: Conveyor, conveyor_dsn: str) -> None:
    schema = app_async.schema
    silent, ghost = uuid.uuid4(), uuid.uuid4()
    first = await app_async.send_async("orphans", 1)
    second = await app_async.send_async("orphans", 2)
    store = WorkerStore(conveyor_dsn, schema, min_size=0, max_size=1)
    try:
        await store.worker_register(silent, "host-a", 4242, ["orphans"], 1)
        [claimed] = await store.job_fetch(["orphans"], silent, 1, None)
        assert claimed[0] == first
        [claimed] = await store.job_fetch(["orphans"], ghost, 1, None)
        assert claimed[0] == second
    finally:
        await store.close()
    assert {f.severity for f in await app_async.diagnose_async()} == {"ok", "warning"}
    async with await psycopg.AsyncConnection.connect(conveyor_dsn, autocommit=True) as conn:
        await conn.execute(
            f"UPDATE {schema}.worker SET heartbeat_at = now() - interval '5 minutes'"
        )
    findings = await app_async.diagnose_async(stale_after=30)
    jobs = {f.message.split(" (running for")[0] for f in by_check(findings, "jobs")}
    assert jobs == {
        f"job {first} (orphans) is active but its worker {silent} stopped sending heartbeats",
        f"job {second} (orphans) is active but its worker {ghost} is gone",
    }
    [worker] = by_check(findings, "workers")
    assert worker.severity == "warning"
    assert worker.message.startswith(f"worker {silent} (host-a pid 4242) silent for 30")


def test_a_waiting_job_nothing_will_release(app: Conveyor, conveyor_dsn: str) -> None:
    job_id = app.send("stuck", {})
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(f"UPDATE {app.schema}.job SET state = 'waiting' WHERE id = %s", (job_id,))
    [stuck] = by_check(app.diagnose(), "jobs")
    assert (stuck.severity, stuck.message) == (
        "error",
        f"job {job_id} (stuck) is waiting but has no pending dependency",
    )
    code, found = doctor(conveyor_dsn, app.schema)
    assert code == 1
    assert {f["severity"] for f in found if f["check"] == "jobs"} == {"error"}


def test_a_check_that_cannot_run_is_a_finding_not_a_crash(app: Conveyor, conveyor_dsn: str) -> None:
    role = f"conveyor_doctor_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")  # no privilege on the schema or database
    try:
        limited = psycopg.conninfo.make_conninfo(conveyor_dsn, user=role)
        with Conveyor(limited, schema=app.schema) as weak:
            findings = weak.diagnose()
        failed = {f.check for f in findings if f.message.startswith("could not run: ")}
        assert {"schema", "jobs", "workers"} <= failed
        assert all(f.severity == "error" for f in findings if f.check in failed)
    finally:
        with psycopg.connect(conveyor_dsn, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


def test_notify_is_checked_where_the_workers_listen(app: Conveyor, conveyor_dsn: str) -> None:
    with Conveyor(conveyor_dsn, schema=app.schema, pgbouncer=True) as polling:
        [notify] = by_check(polling.diagnose(), "notify")
    assert (notify.severity, notify.message) == (
        "warning", "LISTEN is off (pgbouncer=True and no listen_dsn): workers and wait_for poll"
    )  # fmt: skip
    with Conveyor(
        conveyor_dsn, schema=app.schema, pgbouncer=True, listen_dsn=conveyor_dsn
    ) as direct:
        [notify] = by_check(direct.diagnose(), "notify")
    assert notify.severity == "ok"
    nowhere = "postgresql://postgres@127.0.0.1:1/nothing"
    with Conveyor(conveyor_dsn, schema=app.schema, listen_dsn=nowhere) as lost:
        [notify] = by_check(lost.diagnose(), "notify")
    assert notify.severity == "error" and notify.message.startswith("cannot LISTEN: ")
