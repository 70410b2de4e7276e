"""A/B benchmark of the hot path (issue 14): a baseline commit against the current tree, in one
run, alternating, each beside its pgbench floor.

    .venv/bin/python -m bench.ab --baseline cb7aafc [--current REV] [--rounds 3] [--jobs 10000]
                                 [--quick] [--json out.json]

The baseline (and ``--current REV`` when given; else the working tree this file is in) is checked
out into a temporary ``git worktree``, removed at the end. Every scenario runs in a subprocess of
its own (``bench.ab_child``) with ``PYTHONPATH=<tree>/src``, which reports the ``conveyor`` it
imported (checked here) and migrates a fresh schema of its own with that tree's code. Scenario by
scenario the trees alternate (A, B, A, B, ...), round after round; the pgbench floors (the same
SQL with no client) run in every round, on a schema the current tree migrated. Each figure is the
median of the rounds. The table gives, per target of issue 14, both medians, their ratio, the
target, the floor and the ratio to it, and whether the target is met.

This module imports no ``conveyor`` itself, so it stays a neutral judge of the two trees.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.run import INSERT_MANY, INSERT_ONE

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
# Schemas of their own per checkout (CONVEYOR_BENCH_SCHEMA names their prefix), as bench.run.
_PREFIX = os.environ.get("CONVEYOR_BENCH_SCHEMA", "conveyor_ab")
SCHEMAS = {"baseline": f"{_PREFIX}_base", "current": f"{_PREFIX}_cur"}
FLOOR_SCHEMA = f"{_PREFIX}_floor"
CHILD_TIMEOUT = 300

# What our hot path does, as plain statements pgbench runs with no client work: bench.run's
# inserts, and a claim-and-complete with explicit columns (the history's may change).
CLAIM_COMPLETE = """
WITH picked AS (
    SELECT id FROM {s}.job
    WHERE queue = 'floor' AND state IN ('created', 'retry') AND run_at <= now()
    ORDER BY priority DESC, run_at, id
    LIMIT 100
    FOR UPDATE SKIP LOCKED
), done AS (
    DELETE FROM {s}.job j USING picked WHERE j.id = picked.id RETURNING j.*
), routes AS (
    -- Routed once per distinct retention, as ack_jobs does (job_history is a view now).
    SELECT r.retention,
           {s}.archive_drop_at(now() + make_interval(secs => r.retention), now()) AS drop_at
    FROM (SELECT DISTINCT retention FROM done) r
)
INSERT INTO {s}.job_archive (id, queue, state, data, priority, run_at, attempt, retry_limit,
    retry_delay, retry_backoff, retry_delay_max, expire_in, retention, created_at, started_at,
    finished_at, drop_at)
SELECT d.id, d.queue, 'completed', d.data, d.priority, d.run_at, d.attempt + 1, d.retry_limit,
       d.retry_delay, d.retry_backoff, d.retry_delay_max, d.expire_in, d.retention, d.created_at,
       now(), now(), r.drop_at
FROM done d JOIN routes r ON r.retention = d.retention;
"""


# -- pure helpers (tests/unit/test_bench_ab.py) -----------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median of the rounds; NaN when there is none."""
    return statistics.median(values) if values else float("nan")


def percentile(sorted_values: Sequence[float], p: int) -> float:
    """The ``p``-th percentile (1..99) of sorted values, by linear interpolation between closest
    ranks (numpy's default); a single value is every percentile."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = (len(sorted_values) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 or either is NaN."""
    if b == 0 or a != a or b != b:
        return float("nan")
    return a / b


TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)


def pgbench_tps(output: str) -> float:
    """Transactions per second from pgbench's report, connection set-up excluded."""
    found = TPS.search(output)
    if not found:
        raise ValueError(f"no tps line in pgbench output: {output[-300:]!r}")
    return float(found.group(1))


def last_json(stdout: str) -> dict[str, Any]:
    """The last line of a child's stdout that is a JSON object (its result)."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    raise ValueError(f"no JSON result in child output: {stdout[-300:]!r}")


@dataclass(frozen=True)
class Check:
    """One condition of a target: ``kind`` is ``baseline`` (current / baseline ≥ bound),
    ``floor`` (current / floor ≥ bound), ``other`` (current / the current tree's figure named
    ``against`` ≥ bound) or ``at_most`` (current ≤ bound, for latencies)."""

    kind: str
    bound: float
    against: str = ""
    called: str = ""

    def text(self) -> str:
        if self.kind == "at_most":
            return f"<= {self.bound:g}"
        where = {"baseline": "baseline", "floor": "floor"}.get(self.kind, self.called)
        return f">= {self.bound:g}x {where}"


@dataclass(frozen=True)
class Target:
    """A row of the table: a figure (``scenario.metric``), its unit, its checks and its floor."""

    label: str
    figure: str
    unit: str
    checks: tuple[Check, ...] = ()
    floor: str = ""


@dataclass
class Row:
    label: str
    unit: str
    baseline: float
    current: float
    vs_baseline: float
    target: str
    floor: float
    vs_floor: float
    met: bool | None
    notes: list[str] = field(default_factory=list)
    paired: float = float("nan")


def evaluate(
    target: Target,
    baseline: Mapping[str, float],
    current: Mapping[str, float],
    floors: Mapping[str, float],
    paired: Mapping[str, float] | None = None,
) -> Row:
    """A target's row from the medians of both trees and of the floors; ``met`` is None for a
    row with no checks, and False when a figure a check needs is missing. ``paired`` (shown,
    never judged) is the median of the rounds' own current/baseline ratios."""
    base = baseline.get(target.figure, float("nan"))
    cur = current.get(target.figure, float("nan"))
    floor = floors.get(target.floor, float("nan")) if target.floor else float("nan")
    met: bool | None = None if not target.checks else True
    notes: list[str] = []
    for check in target.checks:
        if check.kind == "at_most":
            value, ok = cur, cur <= check.bound
        else:
            against = {"baseline": base, "floor": floor}.get(
                check.kind, current.get(check.against, float("nan"))
            )
            value = ratio(cur, against)
            ok = value >= check.bound
            if check.kind == "other":
                notes.append(f"{value:.2f}x {check.called}")
        met = bool(met) and ok and value == value
    return Row(
        label=target.label,
        unit=target.unit,
        baseline=base,
        current=cur,
        vs_baseline=ratio(cur, base),
        target="; ".join(c.text() for c in target.checks) or "-",
        floor=floor,
        vs_floor=ratio(cur, floor),
        met=met,
        notes=notes,
        paired=(paired or {}).get(target.figure, float("nan")),
    )


def number(value: float, unit: str) -> str:
    if value != value:
        return "-"
    return f"{value:,.2f}" if unit == "ms" else f"{value:,.0f}"


def table(rows: Sequence[Row]) -> str:
    """The result table, in Markdown."""
    out = [
        "| target | unit | baseline | current | current/baseline (paired) | target | floor "
        "| current/floor | |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        verdict = {True: "met", False: "**not met**", None: "-"}[r.met]
        if r.notes:
            verdict += f" ({'; '.join(r.notes)})"
        vs_floor = "-" if r.vs_floor != r.vs_floor else f"{r.vs_floor:.2f}x"
        vs_base = "-" if r.vs_baseline != r.vs_baseline else f"{r.vs_baseline:.2f}x"
        if r.paired == r.paired:
            vs_base += f" ({r.paired:.2f}x)"
        out.append(
            f"| {r.label} | {r.unit} | {number(r.baseline, r.unit)} | {number(r.current, r.unit)}"
            f" | {vs_base} | {r.target} | {number(r.floor, 'jobs/s')} | {vs_floor} | {verdict} |"
        )
    return "\n".join(out)


def medians(runs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per figure (``scenario.metric``), the median over rounds of one tree's runs."""
    collected: dict[str, list[float]] = {}
    for run in runs:
        for key, value in run["metrics"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                collected.setdefault(f"{run['scenario']}.{key}", []).append(float(value))
    return {key: median(values) for key, values in collected.items()}


def paired_ratios(
    baseline: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """Per figure, the median over rounds of current/baseline within the same round: the two
    runs of a round are neighbours in time, so load that drifts across the run cancels."""
    base = {(r["round"], r["scenario"]): r["metrics"] for r in baseline}
    collected: dict[str, list[float]] = {}
    for run in current:
        before = base.get((run["round"], run["scenario"]), {})
        for key, value in run["metrics"].items():
            if key in before and not isinstance(value, bool):
                value = ratio(float(value), float(before[key]))
                if value == value:
                    collected.setdefault(f"{run['scenario']}.{key}", []).append(value)
    return {key: median(values) for key, values in collected.items()}


# -- the targets ----------------------------------------------------------------------

TARGETS = (
    Target("1. drain, 1 process x 10, async no-op", "drain_async_1.rate", "jobs/s",
           (Check("baseline", 2.6),), "claim_complete"),
    Target("1. drain, 2 processes x 10, async no-op", "drain_async_2.rate", "jobs/s",
           (Check("other", 1.1, "drain_async_1.rate", "1 process"),), "claim_complete"),
    Target("   drain, 1 process x 10, async no-op, retention 0 (issue 15)", "drain_zero_1.rate",
           "jobs/s", (Check("other", 1.3, "drain_async_1.rate", "history kept"),)),
    Target("2. drain, 1 process x 10, sync (def) no-op", "drain_sync_1.rate", "jobs/s",
           (Check("other", 0.6, "drain_async_1.rate", "async"),), "claim_complete"),
    Target("3. send, 1 job per call and transaction", "send_one.rate", "jobs/s",
           (Check("baseline", 1.8), Check("floor", 0.8)), "insert_one"),
    Target("4. send_batch of 100", "send_batch_100.rate", "jobs/s",
           (Check("baseline", 2.0),), "insert_many_100"),
    Target("4. send_batch of 10,000", "send_batch_10000.rate", "jobs/s",
           (Check("floor", 0.8),), "insert_many_10000"),
    Target("   send, 1 per call, 8 processes at once, no worker waiting", "send_one_8.rate",
           "jobs/s"),
    Target("   send, 1 per call, a unique key each (insert_jobs)", "send_one_keyed.rate",
           "jobs/s"),
    Target("   send_batch of 100, a unique key each (insert_jobs)", "send_batch_100_keyed.rate",
           "jobs/s"),
    Target("5. enqueue->start p50, idle worker", "latency_idle.p50", "ms", (Check("at_most", 2),)),
    Target("5. enqueue->start p99, idle worker", "latency_idle.p99", "ms", (Check("at_most", 5),)),
    Target("5. enqueue->start p50, beside a loaded producer", "latency_loaded.p50", "ms",
           (Check("at_most", 2),)),
    Target("5. enqueue->start p99, beside a loaded producer", "latency_loaded.p99", "ms",
           (Check("at_most", 5),)),
    Target("5. start_after: latest start past due (max of a round)", "start_after.max", "ms",
           (Check("at_most", 50),)),
    Target("5. start_after: median lateness", "start_after.p50", "ms"),
    Target("   (producer's achieved rate in the loaded run)", "latency_loaded.load_rate",
           "jobs/s"),
)  # fmt: skip


# -- running ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    child: str
    args: tuple[str, ...]
    # False for a figure of the current tree alone (retention 0 came after cb7aafc, whose
    # options refuse it): its target compares it with another of the current tree's figures.
    on_baseline: bool = True


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    n = str(args.jobs)
    return [
        Scenario("drain_async_1", "drain", ("--jobs", n)),
        Scenario("drain_async_2", "drain", ("--jobs", n, "--processes", "2")),
        Scenario("drain_zero_1", "drain", ("--jobs", n, "--retention", "0"), on_baseline=False),
        Scenario("drain_sync_1", "drain", ("--jobs", n, "--kind", "sync")),
        Scenario("send_one", "send_one", ("--jobs", str(args.sends))),
        # Eight processes sending at once, no worker idle: no target of its own (issue 14's
        # lever "notify only when someone can be woken").
        Scenario("send_one_8", "send_concurrent", ("--jobs", str(args.sends), "--processes", "8")),
        Scenario("send_batch_100", "send_batch", ("--jobs", n, "--size", "100")),
        Scenario("send_batch_10000", "send_batch", ("--jobs", n, "--size", "10000")),
        # The general path (insert_jobs), which a job with a unique key takes: no target of
        # its own, a guard against changes to it.
        Scenario("send_one_keyed", "send_one", ("--jobs", str(args.sends), "--keyed")),
        Scenario("send_batch_100_keyed", "send_batch", ("--jobs", n, "--size", "100", "--keyed")),
        Scenario("latency_idle", "latency", ("--probes", str(args.probes))),
        Scenario("latency_loaded", "latency",
                 ("--probes", str(args.probes), "--load-rate", str(args.load_rate))),
        Scenario("start_after", "start_after", ("--due", str(args.due))),
    ]  # fmt: skip


def git(*argv: str) -> str:
    return subprocess.run(
        ["git", *argv], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """``rev`` checked out, detached, in a temporary directory; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="conveyor-ab-")) / "tree"
    git("worktree", "add", "--detach", str(path), rev)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)
        shutil.rmtree(path.parent, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=False)


def run_child(tree: Path, scenario: Scenario, dsn: str, schema: str) -> dict[str, Any]:
    """One scenario against one tree, in a subprocess importing that tree's conveyor."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    cmd = [sys.executable, "-m", "bench.ab_child", scenario.child, "--dsn", dsn,
           "--schema", schema, *scenario.args]  # fmt: skip
    # Output to files and a session of its own: whatever the child leaves behind (a worker, a
    # producer) can neither hold our pipes open nor outlive the run.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err,
                                 start_new_session=True)  # fmt: skip
        try:
            code: int | str = child.wait(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = f"timed out after {CHILD_TIMEOUT} s"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        sys.exit(f"bench.ab: {scenario.name} on {tree}: {code}\n{stdout}\n{stderr}")
    result = last_json(stdout)
    imported = Path(result.pop("conveyor_file")).resolve()
    if not imported.is_relative_to((tree / "src" / "conveyor").resolve()):
        sys.exit(f"bench.ab: {scenario.name} imported {imported}, not the tree {tree}")
    return result


def pgbench_binary() -> str:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    if not found:
        sys.exit("bench.ab: pgbench not found (apt-get install postgresql-client)")
    return str(found[-1])


def pgbench(dsn: str, script: str, transactions: int) -> float:
    """Transactions/s of ``script`` run ``transactions`` times by pgbench on one connection."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
        f.write(script)
        f.flush()
        cmd = [pgbench_binary(), "-n", "-c", "1", "-t", str(transactions), "-f", f.name, dsn]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return pgbench_tps(done.stdout)


def sql(dsn: str, statement: str) -> None:
    subprocess.run(["psql", "-q", "-X", "-v", "ON_ERROR_STOP=1", "-c", statement, dsn],
                   check=True, capture_output=True)  # fmt: skip


def floors(tree: Path, dsn: str, args: argparse.Namespace) -> dict[str, float]:
    """Rows/s of the floors, each on a fresh schema the current tree migrated."""
    reset = Scenario("reset", "reset", ())
    s = FLOOR_SCHEMA
    found: dict[str, float] = {}
    run_child(tree, reset, dsn, s)
    found["insert_one"] = pgbench(dsn, INSERT_ONE.format(s=s), args.sends)
    for rows, name in ((100, "insert_many_100"), (10_000, "insert_many_10000")):
        run_child(tree, reset, dsn, s)
        calls = max(3, args.jobs // rows)
        found[name] = rows * pgbench(dsn, INSERT_MANY.format(s=s, n=rows), calls)
    run_child(tree, reset, dsn, s)
    sql(dsn, INSERT_MANY.format(s=s, n=args.jobs))
    found["claim_complete"] = 100 * pgbench(dsn, CLAIM_COMPLETE.format(s=s), args.jobs // 100)
    sql(dsn, f"DROP SCHEMA IF EXISTS {s} CASCADE")
    return found


def machine(dsn: str) -> dict[str, Any]:
    """What the run ran on: cores, memory, load, PostgreSQL's version and settings."""
    names = ("shared_buffers", "synchronous_commit", "autovacuum", "fsync", "max_connections")
    settings = "version(), " + ", ".join(f"current_setting('{name}')" for name in names)
    out = subprocess.run(["psql", "-X", "-A", "-t", "-F", "|", "-c", f"SELECT {settings}", dsn],
                         check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    version, shared, sync, autovacuum, fsync, conns = out.split("|")
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "load": os.getloadavg(),
        "postgresql": version.split(" on ")[0],
        "shared_buffers": shared,
        "synchronous_commit": sync,
        "autovacuum": autovacuum,
        "fsync": fsync,
        "max_connections": conns,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="the commit to compare against")
    parser.add_argument("--current", help="a commit for B (default: this working tree)")
    parser.add_argument("--dsn", default=os.environ.get("CONVEYOR_BENCH_DSN", DEFAULT_DSN))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per drain and send_batch")
    parser.add_argument("--sends", type=int, default=2000, help="jobs sent one per call")
    parser.add_argument("--probes", type=int, default=300, help="latency probes per run")
    parser.add_argument("--due", type=int, default=15, help="start_after jobs per run")
    parser.add_argument("--load-rate", type=int, default=2000, help="loaded producer, jobs/s")
    parser.add_argument("--only", help="comma-separated scenario names (default: all)")
    parser.add_argument(
        "--quick", action="store_true", help="smaller runs: 3,000 jobs, 500 sends, 60 probes"
    )
    parser.add_argument("--json", type=Path, help="write every raw number here")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.sends, args.probes, args.due = 3000, 500, 60, 6
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    command = "python -m bench.ab " + shlex.join(sys.argv[1:] if argv is None else argv)
    chosen = scenarios(args)
    if args.only:
        wanted = set(args.only.split(","))
        chosen = [s for s in chosen if s.name in wanted]

    began = time.monotonic()
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "baseline": git("rev-parse", args.baseline),
        "current": git("rev-parse", args.current) if args.current else "working tree",
        "head": git("rev-parse", "HEAD"),
        "dirty_src": bool(not args.current and git("status", "--porcelain", "--", "src")),
        "jobs": args.jobs,
        "sends": args.sends,
        "probes": args.probes,
        "due": args.due,
        "load_rate": args.load_rate,
        "concurrency": 10,
        "rounds": args.rounds,
        "machine_start": machine(args.dsn),
    }
    print(f"bench.ab: {json.dumps(meta)}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "current": []}
    floor_runs: list[dict[str, float]] = []
    with worktree(args.baseline) as base, _current(args.current) as cur:
        trees = (("baseline", base), ("current", cur))
        for r in range(args.rounds):
            for scenario in chosen:
                for side, tree in trees:
                    if side == "baseline" and not scenario.on_baseline:
                        continue
                    metrics = run_child(tree, scenario, args.dsn, SCHEMAS[side])
                    load1 = os.getloadavg()[0]
                    run = {"round": r, "scenario": scenario.name, "load1": load1}
                    runs[side].append({**run, "metrics": metrics})
                    shown = ", ".join(f"{k} {v:,.2f}" for k, v in metrics.items())
                    print(f"  round {r + 1} {scenario.name} {side}: {shown}", flush=True)
            floor_runs.append(floors(cur, args.dsn, args))
            print(f"  round {r + 1} floors: {floor_runs[-1]}", flush=True)
        for side in SCHEMAS.values():
            sql(args.dsn, f"DROP SCHEMA IF EXISTS {side} CASCADE")
    meta["machine_end"] = machine(args.dsn)
    meta["minutes"] = round((time.monotonic() - began) / 60, 1)
    base_m, cur_m = medians(runs["baseline"]), medians(runs["current"])
    floor_m = {k: median([f[k] for f in floor_runs]) for k in floor_runs[0]}
    paired = paired_ratios(runs["baseline"], runs["current"])
    rows = [evaluate(t, base_m, cur_m, floor_m, paired) for t in TARGETS]
    print(f"\nbench.ab: {args.rounds} rounds, medians; baseline {meta['baseline'][:10]}, current "
          f"{meta['current'][:10]}; load {meta['machine_start']['load']} -> "
          f"{meta['machine_end']['load']}; {meta['minutes']} min\n")  # fmt: skip
    print(table(rows), flush=True)
    if args.json:
        raw = {"meta": meta, "runs": runs, "floors": floor_runs, "medians":
               {"baseline": base_m, "current": cur_m, "floors": floor_m, "paired": paired},
               "rows": [vars(r) for r in rows]}  # fmt: skip
        args.json.write_text(json.dumps(raw, indent=1, default=str) + "\n")


@contextmanager
def _current(rev: str | None) -> Iterator[Path]:
    if rev is None:
        yield ROOT
        return
    with worktree(rev) as path:
        yield path


if __name__ == "__main__":
    main()
