"""Pure rules that turn what the database reports into a health verdict and doctor findings.

No I/O here: the client gathers rows (catalog, statistics views, live jobs) and these functions
judge them, so every threshold is tested without provoking it in a real database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from conveyor.cron import check_cron, check_timezone
from conveyor.errors import InvalidOption
from conveyor.models import Finding, Health, QueueHealth, Schedule

OK, WARNING, ERROR = "ok", "warning", "error"
# doctor_archive counts the rows of the history before 0012 up to this many.
LEGACY_COUNTED = 1_000_000

# Table bloat: dead tuples beyond this share of all tuples, once there are enough to matter.
DEAD_SHARE = 0.2
DEAD_MIN = 10_000
# Index bloat: an index this much larger than its entries need, once it is big enough to matter.
INDEX_BLOAT = 0.5
INDEX_MIN_BYTES = 8 * 1024 * 1024
# Per-entry overhead of a btree entry (tuple header, item pointer) and the leaf fill factor.
INDEX_ENTRY_OVERHEAD = 16
INDEX_FILL = 0.9
# A transaction open this long holds back vacuum on the churning job table.
TRANSACTION_WARNING = 300.0
TRANSACTION_ERROR = 3600.0


def assess_health(
    *,
    pending: Sequence[str],
    unknown: Sequence[int],
    workers: int,
    queues: Iterable[Mapping[str, Any]],
    max_wait: float | None,
    min_workers: int,
    troubles: Iterable[Mapping[str, Any]] = (),
) -> Health:
    """The verdict on a reachable database: migrations, live workers (and those reporting a
    service down or stuck handler threads), and queues whose oldest runnable job waited longer
    than ``max_wait`` seconds."""
    problems: list[str] = [trouble_line(t) for t in troubles]
    if pending:
        problems.append(f"schema is behind: pending migrations {', '.join(pending)}")
    if unknown:
        problems.append(f"schema is newer than this release: unknown migrations {list(unknown)}")
    if workers < min_workers:
        problems.append(f"{workers} live worker(s), fewer than {min_workers}")
    found = tuple(
        QueueHealth(
            queue=str(q["queue"]),
            depth=int(q["created"]) + int(q["retry"]),
            oldest_waiting_seconds=q["oldest_waiting_seconds"],
            paused=bool(q.get("paused")),
        )
        for q in queues
    )
    if max_wait is not None:
        for q in found:
            # A paused queue's backlog waits on purpose: it is not stuck.
            if q.paused:
                continue
            if q.oldest_waiting_seconds is not None and q.oldest_waiting_seconds > max_wait:
                problems.append(
                    f"queue {q.queue}: oldest runnable job waited "
                    f"{q.oldest_waiting_seconds:.0f}s, over {max_wait:g}s"
                )
    return Health(
        ok=not problems,
        database=True,
        schema_current=not pending and not unknown,
        pending_migrations=tuple(pending),
        unknown_migrations=tuple(unknown),
        workers=workers,
        queues=found,
        problems=tuple(problems),
    )


def unreachable(reason: str) -> Health:
    """The verdict when the database cannot be reached; ``reason`` is the one problem."""
    return Health(
        ok=False,
        database=False,
        schema_current=False,
        pending_migrations=(),
        unknown_migrations=(),
        workers=0,
        queues=(),
        problems=(reason,),
    )


def schema_findings(
    *,
    pending: Sequence[str],
    unknown: Sequence[int],
    missing: Sequence[str],
    unexpected: Sequence[str],
    invalid_indexes: Sequence[str],
) -> list[Finding]:
    """Version and drift: pending or unknown migrations, catalog lines the migrations build
    that the schema lacks (or the other way round), indexes left invalid."""
    check = "schema"
    found: list[Finding] = []
    if pending:
        found.append(
            Finding(ERROR, check, f"pending migrations: {', '.join(pending)}", "conveyor migrate")
        )
    if unknown:
        found.append(
            Finding(
                ERROR, check, f"migrations unknown to this release: {list(unknown)}",
                "upgrade Conveyor to the release that migrated this schema",
            )
        )  # fmt: skip
    for line in missing:
        found.append(
            Finding(
                ERROR, check, f"missing: {line}",
                "restore it from the migrations (conveyor migrate --sql shows their SQL)",
            )
        )  # fmt: skip
    for line in unexpected:
        found.append(
            Finding(
                WARNING, check, f"not built by the migrations: {line}",
                "drop it unless it was added on purpose",
            )
        )  # fmt: skip
    for index in invalid_indexes:
        found.append(
            Finding(
                ERROR, check, f"index {index} is invalid (a concurrent build failed)",
                f"DROP INDEX {index}; then rebuild it as its migration does",
            )
        )  # fmt: skip
    if not found:
        found.append(Finding(OK, check, "schema is current and matches its migrations"))
    return found


def changed_migration(message: str) -> Finding:
    """An applied migration whose file differs from the one this release ships."""
    return Finding(
        ERROR, "schema", message,
        "run the release that applied it, or restore the file as released",
    )  # fmt: skip


def bloat_findings(
    tables: Iterable[Mapping[str, Any]],
    indexes: Iterable[Mapping[str, Any]],
    autovacuum: Iterable[Mapping[str, Any]] = (),
) -> list[Finding]:
    """Autovacuum switched off, tables with many dead tuples, and indexes much larger than
    their entries need."""
    check = "bloat"
    found: list[Finding] = []
    settings = list(autovacuum)
    if any(not a["server"] for a in settings):
        found.append(
            Finding(
                WARNING, check,
                "autovacuum is off on this server: only Conveyor's maintenance vacuums its "
                "busiest tables, and nothing vacuums the others",
                "set autovacuum = on in postgresql.conf and reload",
            )
        )  # fmt: skip
    for a in settings:
        if not a["enabled"]:
            found.append(
                Finding(
                    WARNING, check, f"autovacuum is disabled on table {a['table']}",
                    f"ALTER TABLE {a['table']} RESET (autovacuum_enabled)",
                )
            )  # fmt: skip
    for t in tables:
        live, dead = int(t["live"]), int(t["dead"])
        if dead >= DEAD_MIN and dead > DEAD_SHARE * (live + dead):
            ago = t["vacuumed_seconds_ago"]
            vacuumed = "never vacuumed" if ago is None else f"vacuumed {ago:.0f}s ago"
            found.append(
                Finding(
                    WARNING, check,
                    f"table {t['table']}: {dead:,} dead tuples beside {live:,} live "
                    f"({_size(int(t['total_bytes']))}, {vacuumed})",
                    f"VACUUM (ANALYZE) {t['table']}; and look for a long transaction",
                )
            )  # fmt: skip
    for i in indexes:
        bytes_, rows = int(i["bytes"]), int(i["rows"])
        needed = rows * (int(i["key_width"]) + INDEX_ENTRY_OVERHEAD) / INDEX_FILL
        share = 1 - needed / bytes_ if bytes_ else 0.0
        if bytes_ >= INDEX_MIN_BYTES and share > INDEX_BLOAT:
            found.append(
                Finding(
                    WARNING, check,
                    f"index {i['index']}: {_size(bytes_)}, about {share:.0%} of it empty space",
                    f"REINDEX INDEX CONCURRENTLY {i['index']}",
                )
            )  # fmt: skip
    if not found:
        found.append(Finding(OK, check, "no table or index bloat worth acting on"))
    return found


def history_findings(archive: Mapping[str, Any], default_retention: float) -> list[Finding]:
    """The history's partitions: a runway too short for the retentions in use (a job kept
    longer lands in the newest partition and leaves with it), partitions that ended and were
    not dropped, and the leader's last failure, unless a whole pass succeeded since."""
    check = "history"
    fix = "make sure a worker runs maintenance (not --burst), or run app.maintain()"
    runway = archive["runway_seconds"]
    if runway is None:
        return [
            Finding(
                ERROR, check, "the history has no partitions: finished jobs cannot be kept",
                "run conveyor migrate, then app.maintain()",
            )
        ]  # fmt: skip
    found: list[Finding] = []
    needed = max(default_retention, archive["queue_retention"] or 0.0)
    if runway < needed:
        found.append(
            Finding(
                ERROR if runway <= 0 else WARNING, check,
                f"the history's partitions reach {_duration(runway)} ahead, retentions in use "
                f"need {_duration(needed)}: jobs kept longer leave with the newest partition",
                fix,
            )
        )  # fmt: skip
    left = archive["legacy_rows"]
    if left is not None:
        counted = f"{left:,}+" if left >= LEGACY_COUNTED else f"{left:,}"
        found.append(
            Finding(
                WARNING, check,
                f"the history before migration 0012 is still being moved to the partitions "
                f"({counted} rows left): jobs not moved yet are read, but retrying or deleting "
                "one answers 'not found' until it moves",
                fix,
            )
        )  # fmt: skip
    beyond = int(archive["beyond"] or 0)
    if beyond:
        found.append(
            Finding(
                WARNING, check,
                f"{beyond} finished jobs are kept longer than the history's partitions reach "
                f"(up to {_duration(archive['beyond_reach'] or 0.0)} ahead): the next cleanup "
                "pass extends the partitions and moves them",
                fix,
            )
        )  # fmt: skip
    ended = int(archive["ended"])
    if ended > 1:
        ago = archive["dropped_seconds_ago"]
        last = "never" if ago is None else f"{_duration(ago)} ago"
        found.append(
            Finding(
                WARNING, check,
                f"{ended} history partitions ended and wait to be dropped (last drop: {last})",
                fix,
            )
        )  # fmt: skip
    failed = archive["failed_seconds_ago"]
    if archive["failure"] is not None:
        found.append(
            Finding(
                WARNING, check,
                f"the last history partition upkeep failed {_duration(failed)} ago: "
                f"{archive['failure']}",
                "see the worker's log for the error; it is tried again every cleanup pass",
            )
        )  # fmt: skip
    if not found:
        ago = archive["dropped_seconds_ago"]
        last = "none yet" if ago is None else f"the last {_duration(ago)} ago"
        found.append(
            Finding(
                OK, check,
                f"{archive['partitions']} history partitions reaching {_duration(runway)} "
                f"ahead; {archive['dropped']} dropped ({last})",
            )
        )  # fmt: skip
    return found


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if abs(seconds) >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def transaction_findings(rows: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """The oldest open transactions of the database, which hold back vacuum's horizon."""
    check = "transactions"
    found: list[Finding] = []
    for r in rows:
        seconds = float(r["seconds"] or 0)
        if seconds < TRANSACTION_WARNING:
            continue
        severity = ERROR if seconds >= TRANSACTION_ERROR else WARNING
        found.append(
            Finding(
                severity, check,
                f"pid {r['pid']} ({r['application'] or 'no name'}, {r['state']}) has held a "
                f"transaction open for {seconds:.0f}s, holding back vacuum: {r['query']}",
                f"end it (SELECT pg_terminate_backend({r['pid']})) and fix the code that "
                "leaves it open",
            )
        )  # fmt: skip
    if not found:
        found.append(Finding(OK, check, "no long transaction holds back vacuum"))
    return found


def job_findings(
    orphaned: Iterable[Mapping[str, Any]], waiting: Iterable[Mapping[str, Any]]
) -> list[Finding]:
    """Active jobs whose worker is gone or silent, and waiting jobs nothing will release."""
    check = "jobs"
    found: list[Finding] = []
    for j in orphaned:
        why = "is gone" if j["worker_gone"] else "stopped sending heartbeats"
        found.append(
            Finding(
                WARNING, check,
                f"job {j['id']} ({j['queue']}) is active but its worker {j['worker_id']} {why}"
                f" (running for {float(j['running_seconds']):.0f}s)",
                "start a worker: its maintenance recovers such jobs within stale_after",
            )
        )  # fmt: skip
    for j in waiting:
        why = "has no pending dependency" if j["no_edges"] else "depends on a job that is gone"
        found.append(
            Finding(
                ERROR, check, f"job {j['id']} ({j['queue']}) is waiting but {why}",
                f"cancel it (conveyor cancel {j['id']}) or send it again",
            )
        )  # fmt: skip
    if not found:
        found.append(Finding(OK, check, "no orphaned or stuck jobs"))
    return found


def worker_findings(stale: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """Workers whose heartbeat went silent."""
    check = "workers"
    found = [
        Finding(
            WARNING, check,
            f"worker {w['id']} ({w['hostname']} pid {w['pid']}) silent for "
            f"{float(w['silent_seconds']):.0f}s",
            "check the process; a running worker's maintenance removes dead rows",
        )
        for w in stale
    ]  # fmt: skip
    return found or [Finding(OK, check, "every registered worker sends heartbeats")]


def trouble_line(worker: Mapping[str, Any]) -> str:
    """One line on a live worker that reports a service down or stuck handler threads."""
    parts = [f"service {name} down ({error})" for name, error in worker["services_down"].items()]
    if worker["stuck_threads"]:
        parts.append(f"{worker['stuck_threads']} handler thread(s) stuck in a sync handler")
    return f"worker {worker['id']} ({worker['hostname']} pid {worker['pid']}): " + "; ".join(parts)


def trouble_findings(troubles: Iterable[Mapping[str, Any]]) -> list[Finding]:
    """Live workers whose background services are down or whose handler threads are stuck."""
    return [
        Finding(
            ERROR if t["services_down"] else WARNING, "workers", trouble_line(t),
            "read the worker's log for the traceback; a service restarts by itself with backoff"
            if t["services_down"]
            else "a sync handler ignores job.cancelled: make it check the flag and return",
        )
        for t in troubles
    ]  # fmt: skip


def schedule_findings(schedules: Iterable[Schedule]) -> list[Finding]:
    """Schedules the scheduler skips because it cannot evaluate them (written from SQL with an
    unknown time zone or a bad cron expression)."""
    found = []
    for s in schedules:
        try:
            check_timezone(s.tz)
            if s.cron is not None:
                check_cron(s.cron, s.tz)
        except InvalidOption as exc:
            found.append(
                Finding(
                    ERROR, "schedules", f"schedule {s.name} never fires: {exc}",
                    f"fix it with app.schedule({s.name!r}, ...) or remove it",
                )
            )  # fmt: skip
    return found or [Finding(OK, "schedules", "every schedule can be evaluated")]


def notify_findings(seconds: float | None, timeout: float) -> list[Finding]:
    """Whether a NOTIFY reached a LISTEN on another connection in time."""
    check = "notify"
    if seconds is None:
        return [
            Finding(
                ERROR, check, f"a NOTIFY did not arrive within {timeout:g}s",
                "connect workers directly, not through a pooler in transaction mode",
            )
        ]  # fmt: skip
    return [Finding(OK, check, f"LISTEN/NOTIFY works ({seconds * 1000:.0f} ms)")]


def polling() -> Finding:
    """The app does not LISTEN at all (``pgbouncer=True`` without a ``listen_dsn``)."""
    return Finding(
        WARNING, "notify",
        "LISTEN is off (pgbouncer=True and no listen_dsn): workers and wait_for poll",
        "pass listen_dsn= a direct connection to the server, bypassing PgBouncer",
    )  # fmt: skip


def listen_unreachable(reason: str) -> Finding:
    """The connection the workers LISTEN on (``listen_dsn``) cannot be opened."""
    return Finding(
        ERROR, "notify", f"cannot LISTEN: {reason.strip().splitlines()[0]}",
        "check listen_dsn: workers cannot be woken by NOTIFY",
    )  # fmt: skip


def failed_check(check: str, error: BaseException) -> Finding:
    """A check that could not run at all."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return Finding(ERROR, check, f"could not run: {message}", "fix the error above and rerun")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}"
        value /= 1024
    return f"{value:.0f} TB"
