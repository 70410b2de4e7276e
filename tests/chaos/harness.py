"""The chaos harness: a producer and several worker processes against a PostgreSQL of its own,
while faults are injected on a schedule; then an audit of the database and of the handlers'
ledger.

Faults: SIGKILL of a worker (a new one replaces it), SIGSTOP/SIGCONT of a worker (longer than
``stale_after``, so its jobs are rescued while it sleeps), ``pg_terminate_backend`` of every worker
connection, a full PostgreSQL restart, a stalled network path and a cut one (through a TCP proxy
between the workers and the server), lock contention from a long transaction, and the workers'
wall clock jumping an hour ahead (``time.time`` of the worker processes; the monotonic clock does
not move, as on a real host). libfaketime, which would move the clock under the interpreter,
breaks CPython's ``time.sleep`` (EINVAL), so the jump is made in Python.

The server is an embedded PostgreSQL in a directory of the harness, so a restart disturbs nobody
else. Run the long form with ``python -m tests.chaos --minutes 10``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from conveyor import Conveyor
from conveyor.embedded import embedded_postgres
from tests.chaos.proxy import Proxy

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = "chaos"
KINDS = ("kill", "stop", "terminate", "restart", "stall", "cut", "lock", "clock")
WORKER_ARGS = (
    "--concurrency", "8", "--stale-after", "2", "--heartbeat-interval", "0.5",
    "--recover-interval", "0.5", "--shutdown-timeout", "10", "--log-level", "WARNING",
)  # fmt: skip


@dataclass
class Fault:
    """One injected fault, and how long after it ended the jobs it caught running (the
    victim's, for kill and stop) had all finished."""

    kind: str
    at: float
    caught: int = 0
    recovered_in: float | None = None


@dataclass
class Report:
    """What the audit found."""

    faults: list[Fault] = field(default_factory=list)
    sent: int = 0
    ambiguous: int = 0
    completed: int = 0
    dead: int = 0
    retried: int = 0
    reruns: int = 0
    double_attempts: int = 0
    stale_starts: int = 0
    lost: list[uuid.UUID] = field(default_factory=list)
    # What the live table and the ledger say of each lost job, for a failing run.
    lost_detail: list[str] = field(default_factory=list)
    unexpected_dead: list[uuid.UUID] = field(default_factory=list)
    missing_dead: list[uuid.UUID] = field(default_factory=list)

    def table(self) -> str:
        """The report as a Markdown table."""
        kinds = Counter(f.kind for f in self.faults)
        recover = defaultdict(list)
        caught: Counter[str] = Counter()
        for f in self.faults:
            caught[f.kind] += f.caught
            if f.recovered_in is not None:
                recover[f.kind].append(f.recovered_in)
        lines = [
            "| figure | value |",
            "|---|---:|",
            f"| faults injected | {len(self.faults)} "
            f"({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}) |",
            f"| jobs sent (committed) | {self.sent} |",
            f"| sends with an unknown outcome (connection lost at commit) | {self.ambiguous} |",
            f"| completed | {self.completed} |",
            f"| dead letters (all expected) | {self.dead} |",
            f"| retried (finished on attempt > 1) | {self.retried} |",
            f"| re-runs of completed jobs (at-least-once) | {self.reruns} |",
            f"| the same attempt run twice | {self.double_attempts} |",
            f"| an older attempt started after a newer one | {self.stale_starts} |",
            f"| lost (must be 0) | {len(self.lost)} |",
            f"| unexpected / missing dead letters | {len(self.unexpected_dead)} / "
            f"{len(self.missing_dead)} |",
        ]
        for kind in sorted(recover):
            times = recover[kind]
            lines.append(
                f"| {kind}: jobs it caught running; all finished after (max / mean s) | "
                f"{caught[kind]}; {max(times):.2f} / {sum(times) / len(times):.2f} |"
            )
        lines += [f"| lost job | {detail} |" for detail in self.lost_detail]
        unrecovered = [f.kind for f in self.faults if f.recovered_in is None]
        if unrecovered:
            lines.append(f"| faults whose jobs did not finish in 60 s | {', '.join(unrecovered)} |")
        return "\n".join(lines)


class Chaos:
    """One chaos run: start everything, inject faults for ``duration`` seconds, audit."""

    def __init__(
        self,
        data_dir: Path,
        *,
        workers: int = 3,
        rate: float = 200.0,
        duration: float = 60.0,
        fault_every: float = 5.0,
        kinds: tuple[str, ...] = KINDS,
        seed: int = 1,
    ) -> None:
        self.data_dir = data_dir
        self.n_workers = workers
        self.rate = rate
        self.duration = duration
        self.fault_every = fault_every
        self.kinds = kinds
        self.random = random.Random(seed)
        self.clock_file = data_dir.parent / "clock-offset"
        self.report = Report()
        self._committed: list[tuple[uuid.UUID, bool]] = []
        self._producing = threading.Event()
        self._workers: list[subprocess.Popen[str]] = []
        self._logs: list[str] = []
        self._stuck: list[tuple[Any, ...]] = []

    # -- the server, the proxy and the workers -----------------------------------------------

    @contextlib.contextmanager
    def _server(self) -> Iterator[str]:
        with embedded_postgres(self.data_dir) as dsn:
            yield dsn

    def _start_worker(self) -> None:
        env = {
            **os.environ,
            "CONVEYOR_DATABASE_URL": self.proxied_dsn,
            "CONVEYOR_SCHEMA": SCHEMA,
            "CHAOS_LEDGER_DSN": self.dsn,
            "CHAOS_CLOCK_FILE": str(self.clock_file),
        }
        log = self.data_dir.parent / f"worker-{len(self._logs)}.log"
        self._logs.append(str(log))
        self._workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "conveyor.cli",
                    "worker",
                    "tests.chaos.app:app",
                    *WORKER_ARGS,
                ],
                cwd=ROOT,
                env=env,
                stdout=log.open("w"),
                stderr=subprocess.STDOUT,
                text=True,
            )
        )

    def _alive_workers(self) -> list[subprocess.Popen[str]]:
        return [w for w in self._workers if w.poll() is None]

    # -- the producer ------------------------------------------------------------------------

    def _produce(self) -> None:
        app = Conveyor(self.dsn, schema=SCHEMA)
        n = 0
        batch = 10
        try:
            while self._producing.is_set():
                items = []
                for _ in range(batch):
                    n += 1
                    doomed = self.random.random() < 0.03
                    items.append(("chaos.doomed" if doomed else "chaos.work", {"n": n}))
                started = time.monotonic()
                try:
                    ids = app.send_batch(items)
                except Exception:  # the server is restarting or the lock holds: try again
                    self.report.ambiguous += batch
                    time.sleep(0.2)
                    continue
                self._committed.extend(
                    (i, queue == "chaos.doomed") for i, (queue, _) in zip(ids, items, strict=True)
                )
                time.sleep(max(0.0, batch / self.rate - (time.monotonic() - started)))
        finally:
            app.close()

    # -- faults --------------------------------------------------------------------------------

    def _query(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        for _ in range(100):
            try:
                with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                    return conn.execute(query, params).fetchall()
            except psycopg.OperationalError:
                time.sleep(0.2)
        raise AssertionError("the database stayed unreachable")

    def _held(self, pid: int | None) -> list[uuid.UUID]:
        """The jobs running now: those of the worker process ``pid``, or all."""
        return [
            r[0]
            for r in self._query(
                f"SELECT j.id FROM {SCHEMA}.job j JOIN {SCHEMA}.worker w ON w.id = j.worker_id "
                "WHERE %s::int IS NULL OR w.pid = %s::int",
                (pid, pid),
            )
        ]

    def _unfinished(self, ids: list[uuid.UUID]) -> int:
        rows = self._query(f"SELECT count(*) FROM {SCHEMA}.job WHERE id = ANY (%s)", (ids,))
        return int(rows[0][0])

    def _inject(self, kind: str, victim: subprocess.Popen[str]) -> None:
        if kind == "kill":
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            self._start_worker()
        elif kind == "stop":
            victim.send_signal(signal.SIGSTOP)
            time.sleep(4.0)  # past stale_after: its jobs are rescued while it sleeps
            victim.send_signal(signal.SIGCONT)
        elif kind == "terminate":
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'conveyor%%' AND pid <> pg_backend_pid()"
                )
        elif kind == "restart":
            self._pg.__exit__(None, None, None)
            time.sleep(1.0)
            self._pg = self._server()
            again = self._pg.__enter__()
            assert again == self.dsn, (again, self.dsn)
        elif kind == "stall":
            self.proxy.stall()
            time.sleep(3.0)
            self.proxy.resume()
        elif kind == "cut":
            self.proxy.cut()
        elif kind == "lock":
            with psycopg.connect(self.dsn) as conn:
                conn.execute(f"LOCK TABLE {SCHEMA}.queue IN SHARE ROW EXCLUSIVE MODE")
                conn.execute(
                    f"SELECT id FROM {SCHEMA}.job WHERE state IN ('created', 'retry') "
                    "LIMIT 50 FOR UPDATE"
                )
                time.sleep(3.0)
        elif kind == "clock":
            self.clock_file.write_text("3600")
            time.sleep(3.0)
            self.clock_file.write_text("0")

    def _fault(self, kind: str) -> None:
        """Inject one fault; then time how long until every job that was running when it
        struck (on the victim, for kill and stop) has finished."""
        victim = self.random.choice(self._alive_workers())
        held = self._held(victim.pid if kind in ("kill", "stop") else None)
        fault = Fault(kind, time.monotonic(), len(held))
        self.report.faults.append(fault)
        self._inject(kind, victim)
        ended = time.monotonic()
        while time.monotonic() - ended < 60:
            if self._unfinished(held) == 0:
                fault.recovered_in = time.monotonic() - ended
                break
            time.sleep(0.05)

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> Report:
        """Run the whole experiment and return the audit."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.clock_file.write_text("0")
        self._pg = self._server()
        self.dsn = self._pg.__enter__()
        info = conninfo_to_dict(self.dsn)
        socket_path = f"{info['host']}/.s.PGSQL.{info.get('port') or 5432}"
        self.proxy = Proxy(socket_path)
        port = self.proxy.start()
        self.proxied_dsn = f"postgresql://{info.get('user', 'postgres')}@127.0.0.1:{port}/" + str(
            info.get("dbname", "postgres")
        )
        producer = threading.Thread(target=self._produce, name="chaos-producer")
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            with Conveyor(self.dsn, schema=SCHEMA) as app:
                app.migrate()
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(
                    f"CREATE TABLE {SCHEMA}.ledger (job_id uuid, attempt int, pid int, "
                    "began_at timestamptz, started_at timestamptz DEFAULT clock_timestamp())"
                )
            for _ in range(self.n_workers):
                self._start_worker()
            self._producing.set()
            producer.start()
            end = time.monotonic() + self.duration
            order = list(self.kinds)
            i = 0
            while time.monotonic() < end or i < len(order):  # every kind at least once
                time.sleep(self.fault_every * (0.5 + self.random.random()))
                if i % len(order) == 0:
                    self.random.shuffle(order)
                self._fault(order[i % len(order)])
                i += 1
            self._producing.clear()
            producer.join(30)
            self._quiesce()
            # Whatever is still live now is stuck: how it stands, before shutdown hands it back.
            self._stuck = self._query(
                "SELECT j.id, j.queue, j.state, j.attempt, now() - j.run_at, "
                "now() - j.started_at, w.pid, now() - w.heartbeat_at, j.errors -> -1 "
                f"FROM {SCHEMA}.job j LEFT JOIN {SCHEMA}.worker w ON w.id = j.worker_id LIMIT 10"
            )
            for w in self._alive_workers():
                w.send_signal(signal.SIGTERM)
            for w in self._workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.wait(30)
            self._audit()
        finally:
            self._producing.clear()
            for w in self._workers:
                if w.poll() is None:
                    w.kill()
            self.proxy.close()
            self._pg.__exit__(None, None, None)
        return self.report

    def _quiesce(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with psycopg.connect(self.dsn) as conn:
                row = conn.execute(f"SELECT count(*) FROM {SCHEMA}.job").fetchone()
            if row == (0,):
                return
            time.sleep(0.2)

    def _audit(self) -> None:
        report = self.report
        with psycopg.connect(self.dsn) as conn:
            history: dict[uuid.UUID, tuple[str, int]] = {
                r[0]: (r[1], r[2])
                for r in conn.execute(f"SELECT id, state, attempt FROM {SCHEMA}.job_history")
            }
            runs: list[tuple[Any, ...]] = conn.execute(
                f"SELECT job_id, attempt, coalesce(began_at, started_at) AS began "
                f"FROM {SCHEMA}.ledger ORDER BY began"
            ).fetchall()
        committed = dict(self._committed)
        report.sent = len(committed)
        report.lost = [i for i in committed if i not in history]
        report.lost_detail = [
            f"{detail} ledger: {[r[1:] for r in runs if r[0] == detail[0]]}"
            for detail in self._stuck
        ]
        report.completed = sum(1 for s, _ in history.values() if s == "completed")
        failed = {i for i, (s, _) in history.items() if s == "failed"}
        report.dead = len(failed)
        doomed = {i for i, d in committed.items() if d}
        report.unexpected_dead = sorted(failed - doomed)
        report.missing_dead = sorted(doomed - failed)
        report.retried = sum(
            1 for i, (s, a) in history.items() if s == "completed" and a > 1 and i in committed
        )
        per_attempt = Counter((r[0], r[1]) for r in runs)
        report.double_attempts = sum(n - 1 for n in per_attempt.values() if n > 1)
        completed_runs = Counter(r[0] for r in runs if history.get(r[0], ("", 0))[0] == "completed")
        report.reruns = sum(n - 1 for n in completed_runs.values())
        newest: dict[uuid.UUID, int] = {}
        for job_id, attempt, _at in runs:
            if attempt < newest.get(job_id, 0):
                report.stale_starts += 1
            newest[job_id] = max(attempt, newest.get(job_id, 0))

    def worker_logs(self) -> str:
        """The tail of every worker's output, for a failing run."""
        out = []
        for path in self._logs:
            with contextlib.suppress(OSError):
                out.append(f"--- {path}\n" + Path(path).read_text()[-2000:])
        return "\n".join(out)
