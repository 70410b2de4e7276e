"""The thresholds of the health verdict and of the doctor's findings, without a database."""

from __future__ import annotations

from conveyor import diagnosis
from conveyor.models import Finding

MB = 1024 * 1024


def table(live: int, dead: int, ago: float | None = 30.0) -> dict[str, object]:
    return {
        "table": "job", "live": live, "dead": dead, "total_bytes": 5 * MB,
        "vacuumed_seconds_ago": ago,
    }  # fmt: skip


def index(bytes_: int, rows: int, key_width: int = 16) -> dict[str, object]:
    return {"index": "job_fetch_idx", "bytes": bytes_, "rows": rows, "key_width": key_width}


def test_health_lists_each_problem() -> None:
    queues = [
        {"queue": "a", "created": 2, "retry": 1, "oldest_waiting_seconds": 30.0},
        {"queue": "b", "created": 0, "retry": 0, "oldest_waiting_seconds": None},
    ]
    fine = diagnosis.assess_health(
        pending=[], unknown=[], workers=2, queues=queues, max_wait=60, min_workers=2
    )
    assert fine.ok and fine.schema_current and fine.queues[0].depth == 3
    bad = diagnosis.assess_health(
        pending=["0003_maintenance"], unknown=[9], workers=1, queues=queues, max_wait=10,
        min_workers=2,
    )  # fmt: skip
    assert not bad.ok and not bad.schema_current
    assert bad.problems == (
        "schema is behind: pending migrations 0003_maintenance",
        "schema is newer than this release: unknown migrations [9]",
        "1 live worker(s), fewer than 2",
        "queue a: oldest runnable job waited 30s, over 10s",
    )
    down = diagnosis.unreachable("database unavailable: refused")
    assert (down.ok, down.database, down.problems) == (
        False,
        False,
        ("database unavailable: refused",),
    )


def test_table_bloat_needs_both_a_share_and_a_count_of_dead_tuples() -> None:
    def severities(rows: list[dict[str, object]]) -> list[str]:
        return [f.severity for f in diagnosis.bloat_findings(rows, [])]

    assert severities([table(live=100, dead=9_999)]) == ["ok"]  # few, however large a share
    assert severities([table(live=1_000_000, dead=100_000)]) == ["ok"]  # under a fifth
    assert severities([table(live=30_000, dead=10_000)]) == ["warning"]
    [found] = diagnosis.bloat_findings([table(live=30_000, dead=10_000, ago=None)], [])
    assert (
        found.message == "table job: 10,000 dead tuples beside 30,000 live (5 MB, never vacuumed)"
    )


def test_index_bloat_compares_the_size_with_what_the_entries_need() -> None:
    # 100,000 entries of 16 + 16 bytes need about 3.4 MB at 90% fill.
    assert diagnosis.bloat_findings([], [index(6 * MB, 100_000)])[0].severity == "ok"  # small
    assert diagnosis.bloat_findings([], [index(9 * MB, 100_000)])[0].severity == "warning"
    assert diagnosis.bloat_findings([], [index(9 * MB, 200_000)])[0].severity == "ok"
    [found] = diagnosis.bloat_findings([], [index(64 * MB, 0)])
    assert found.fix == "REINDEX INDEX CONCURRENTLY job_fetch_idx"
    assert "100% of it empty space" in found.message


def test_long_transactions_warn_then_fail() -> None:
    def row(seconds: float) -> dict[str, object]:
        return {"pid": 7, "application": "", "state": "idle in transaction",
                "seconds": seconds, "query": "SELECT 1"}  # fmt: skip

    assert [f.severity for f in diagnosis.transaction_findings([row(299)])] == ["ok"]
    [warned] = diagnosis.transaction_findings([row(301)])
    assert warned.severity == "warning" and "pid 7 (no name, idle in transaction)" in warned.message
    assert "pg_terminate_backend(7)" in warned.fix
    assert diagnosis.transaction_findings([row(3600)])[0].severity == "error"


def test_notify_and_a_check_that_could_not_run() -> None:
    [lost] = diagnosis.notify_findings(None, 1.0)
    assert (lost.severity, lost.message) == ("error", "a NOTIFY did not arrive within 1s")
    assert diagnosis.notify_findings(0.002, 1.0)[0] == Finding(
        "ok", "notify", "LISTEN/NOTIFY works (2 ms)"
    )
    failed = diagnosis.failed_check("jobs", RuntimeError("boom\nmore"))
    assert (failed.severity, failed.message) == ("error", "could not run: boom")


def test_schema_findings() -> None:
    clean = diagnosis.schema_findings(
        pending=[], unknown=[], missing=[], unexpected=[], invalid_indexes=[]
    )
    assert [f.severity for f in clean] == ["ok"]
    found = diagnosis.schema_findings(
        pending=["0003_maintenance"], unknown=[], missing=["table job"],
        unexpected=["table extra"], invalid_indexes=["x_idx"],
    )  # fmt: skip
    assert [f.severity for f in found] == ["error", "error", "warning", "error"]
    assert found[0].fix == "conveyor migrate"


def test_autovacuum_off_on_the_server_or_a_table() -> None:
    on = [{"table": "job", "server": True, "enabled": True}]
    assert [f.severity for f in diagnosis.bloat_findings([], [], on)] == ["ok"]
    off = [{"table": "job", "server": False, "enabled": True}]
    [found] = diagnosis.bloat_findings([], [], off)
    assert found.severity == "warning" and found.message.startswith("autovacuum is off")
    table_off = [{"table": "job", "server": True, "enabled": False}]
    [found] = diagnosis.bloat_findings([], [], table_off)
    assert found.message == "autovacuum is disabled on table job"
