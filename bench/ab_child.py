"""One A/B benchmark scenario against whichever ``conveyor`` ``PYTHONPATH`` names (bench.ab).

    python -m bench.ab_child SCENARIO --dsn DSN --schema SCHEMA [--jobs N] [...]

Each run drops ``--schema``, migrates it with the imported tree's own code, measures, and prints
one JSON line on stdout: ``conveyor_file`` (the imported package, checked by the parent) and the
scenario's metrics. Worker processes are ``bench.ab_worker`` with the same environment.
Scenarios: drain, send_one, send_concurrent, send_batch, latency, start_after, reset; ``produce``
is the loaded producer a latency run starts beside its probes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

import conveyor
import conveyor.config
from bench.ab import percentile
from conveyor import Conveyor, JobState

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "bench"


def reset(dsn: str, schema: str) -> Conveyor:
    """A fresh schema, migrated by the imported tree."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    app = Conveyor(dsn, schema=schema)
    app.migrate()
    return app


def roll_counters(dsn: str, schema: str) -> None:
    """Count every finished job into the counters, as a worker's rollup would: a drain in burst
    mode runs none, and ``queue_stats`` reads at most a bounded tail past the counters (20,000
    rows), so the check of a longer drain would otherwise read short."""
    bounds = list(getattr(conveyor.config, "STATS_WAIT_BOUNDS_MS", ()))
    if not bounds:  # a tree before the counters: queue_stats scans the history
        return
    roll = sql.SQL("SELECT counted FROM {}.stats_rollup(now(), 0, 3600, 50000, %s)").format(
        sql.Identifier(schema)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        while (found := conn.execute(roll, [bounds]).fetchone()) and found[0] >= 50_000:
            pass


def worker(dsn: str, schema: str, mode: str, kind: str, concurrency: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.ab_worker", dsn, schema, mode, kind, str(concurrency)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def same_tree(line: str) -> None:
    """A worker must import the same conveyor as this process."""
    found = json.loads(line)["conveyor_file"]
    if found != conveyor.__file__:
        sys.exit(f"ab_child: worker imported {found}, expected {conveyor.__file__}")


def drain(args: argparse.Namespace) -> dict[str, Any]:
    """Jobs/s of ``--processes`` workers (``--concurrency`` each) draining ``--jobs`` no-op jobs,
    from the moment all are told to go until the last one's drain returned (acks flushed)."""
    n = args.jobs
    with reset(args.dsn, args.schema) as app:
        if args.retention is not None:
            app.create_queue(QUEUE, retention=args.retention)
        for start in range(0, n, 10_000):
            app.send_batch([(QUEUE, {"i": i}) for i in range(start, min(n, start + 10_000))])
    procs = [
        worker(args.dsn, args.schema, "drain", args.kind, args.concurrency)
        for _ in range(args.processes)
    ]
    for p in procs:
        assert p.stdout is not None
        same_tree(p.stdout.readline())
        json.loads(p.stdout.readline())  # ready
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    roll_counters(args.dsn, args.schema)
    with Conveyor(args.dsn, schema=args.schema) as app:
        stats = app.queue_stats(QUEUE)
    calls = sum(r["calls"] for r in results)
    completed = stats.counts.get(JobState.COMPLETED, 0)
    # A tree before 0017 does not count jobs that keep no history: reported, not refused.
    uncounted = args.retention == 0 and completed == 0
    if (
        calls != n
        or stats.queued
        or stats.counts.get(JobState.ACTIVE, 0)
        or (completed != n and not uncounted)
    ):
        sys.exit(f"ab_child: drain ran {calls} handler calls, {completed} completed of {n}")
    return {"rate": n / seconds, "seconds": seconds, "counted": completed}


def keyed(args: argparse.Namespace, i: int) -> dict[str, Any]:
    """The options of job ``i``: a unique key of its own with ``--keyed`` (which sends it by the
    general path, insert_jobs, that settles keys), else none."""
    return {"unique_key": f"k{i}"} if args.keyed else {}


def send_one(args: argparse.Namespace) -> dict[str, Any]:
    """Jobs/s of ``send``, one job per call and transaction, on one connection."""
    with reset(args.dsn, args.schema) as app:
        for i in range(20):
            app.send("warm", {"i": i})
        start = time.perf_counter()
        for i in range(args.jobs):
            app.send(QUEUE, {"i": i}, **keyed(args, i))
        seconds = time.perf_counter() - start
    return {"rate": args.jobs / seconds, "seconds": seconds}


def send_concurrent(args: argparse.Namespace) -> dict[str, Any]:
    """Jobs/s of ``--processes`` processes sending ``--jobs`` jobs between them, each one job per
    call and transaction, all at once, while no worker runs (as when every worker is busy): the
    commits of concurrent senders, which a NOTIFY in each would make one at a time."""
    reset(args.dsn, args.schema).close()
    per = args.jobs // args.processes
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(args.processes + 1)
    done: multiprocessing.Queue[int] = context.Queue()
    senders = [
        context.Process(target=_send_some, args=(args.dsn, args.schema, per, ready, done))
        for _ in range(args.processes)
    ]
    for sender in senders:
        sender.start()
    ready.wait()
    start = time.perf_counter()
    sent = sum(done.get(timeout=240) for _ in senders)
    seconds = time.perf_counter() - start
    for sender in senders:
        sender.join()
    return {"rate": sent / seconds, "seconds": seconds}


def _send_some(dsn: str, schema: str, n: int, ready: Any, done: Any) -> None:
    with Conveyor(dsn, schema=schema) as app:
        for i in range(20):
            app.send("warm", {"i": i})
        ready.wait()
        for i in range(n):
            app.send(QUEUE, {"i": i})
    done.put(n)


def send_batch(args: argparse.Namespace) -> dict[str, Any]:
    """Jobs/s of ``send_batch`` of ``--size`` jobs, ``--jobs`` jobs in all (at least 3 calls)."""
    size = args.size
    calls = max(3, args.jobs // size)
    with reset(args.dsn, args.schema) as app:
        app.send_batch([("warm", {"i": i}) for i in range(min(size, 1000))])
        batches = [
            [(QUEUE, {"i": i}, keyed(args, c * size + i)) for i in range(size)]
            for c in range(calls)
        ]
        start = time.perf_counter()
        for batch in batches:
            app.send_batch(batch)
        seconds = time.perf_counter() - start
    return {"rate": size * calls / seconds, "seconds": seconds}


def lines_of(stream: IO[str]) -> queue.Queue[dict[str, Any]]:
    """The JSON lines a worker prints, as they come."""
    found: queue.Queue[dict[str, Any]] = queue.Queue()

    def read() -> None:
        for line in stream:
            found.put(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    return found


def take(found: queue.Queue[dict[str, Any]], key: str, count: int, timeout: float) -> list[Any]:
    """The next ``count`` lines carrying ``key``, within ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    got: list[Any] = []
    while len(got) < count:
        try:
            line = found.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            sys.exit(f"ab_child: {len(got)} of {count} {key!r} jobs started in {timeout:g} s")
        if key in line:
            got.append(line)
    return got


@contextmanager
def serving(args: argparse.Namespace) -> Iterator[queue.Queue[dict[str, Any]]]:
    """An idle worker process (concurrency 10, library defaults) serving the bench queue, warmed
    up by one job it has started; stopped with SIGTERM."""
    proc = worker(args.dsn, args.schema, "serve", "async", 10)
    assert proc.stdout is not None
    same_tree(proc.stdout.readline())
    found = lines_of(proc.stdout)
    try:
        with Conveyor(args.dsn, schema=args.schema) as app:
            app.send(QUEUE, {"probe": -1})
        take(found, "probe", 1, 30.0)
        time.sleep(0.5)  # back to idle, waiting on its LISTEN
        yield found
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@contextmanager
def producing(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """A producer process sending ``--load-rate`` jobs/s to the bench queue (a batch every 10 ms)
    until this block ends; yields a dict that gets its achieved rate."""
    if not args.load_rate:
        yield {}
        return
    cmd = [sys.executable, "-m", "bench.ab_child", "produce", "--dsn", args.dsn,
           "--schema", args.schema, "--load-rate", str(args.load_rate)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    json.loads(proc.stdout.readline())  # sending
    achieved: dict[str, Any] = {}
    try:
        time.sleep(0.5)
        yield achieved
    finally:
        proc.send_signal(signal.SIGTERM)
        achieved.update(json.loads(proc.communicate(timeout=60)[0].strip().splitlines()[-1]))


def latency(args: argparse.Namespace) -> dict[str, Any]:
    """Enqueue-to-start latency of ``--probes`` jobs sent one by one every 10 ms to an idle
    worker, beside a producer at ``--load-rate`` jobs/s when that is not 0. Measured in wall-clock
    time from the ``send`` call (and from its return) to the handler's first line."""
    reset(args.dsn, args.schema).close()
    sent: dict[int, tuple[float, float]] = {}
    with (
        serving(args) as found,
        producing(args) as load,
        Conveyor(args.dsn, schema=args.schema) as app,
    ):
        for k in range(args.probes):
            called = time.time()
            app.send(QUEUE, {"probe": k})
            sent[k] = (called, time.time())
            time.sleep(0.01)
        started = {line["probe"]: line["started"] for line in take(found, "probe", args.probes, 60)}
    from_call = sorted(1000 * (started[k] - sent[k][0]) for k in sent)
    from_commit = sorted(1000 * (started[k] - sent[k][1]) for k in sent)
    return {
        "p50": percentile(from_call, 50),
        "p99": percentile(from_call, 99),
        "max": from_call[-1],
        "commit_p50": percentile(from_commit, 50),
        "commit_p99": percentile(from_commit, 99),
        "load_rate": load.get("rate", 0.0),
    }


def start_after(args: argparse.Namespace) -> dict[str, Any]:
    """How late past its due time a job sent with ``start_after`` starts with an idle worker:
    ``--due`` jobs sent at once, due 0.3 s + 0.2 s x k later (one at a time, the worker idle
    between), lateness from the due time to the handler's first line."""
    reset(args.dsn, args.schema).close()
    with serving(args) as found, Conveyor(args.dsn, schema=args.schema) as app:
        base = time.time() + 0.3
        for k in range(args.due):
            due = base + 0.2 * k
            app.send(QUEUE, {"due": k, "at": due}, start_after=datetime.fromtimestamp(due, UTC))
        lines = take(found, "due", args.due, 0.2 * args.due + 30)
    late = sorted(1000 * (line["started"] - line["at"]) for line in lines)
    return {"p50": percentile(late, 50), "max": late[-1], "min": late[0]}


def produce(args: argparse.Namespace) -> None:
    # A plain flag: a handler that took a lock (Event.set) could deadlock on the one the main
    # thread holds when the signal lands.
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: stop.append(signum))
    per_tick = max(1, args.load_rate // 100)
    sent = 0
    with Conveyor(args.dsn, schema=args.schema) as app:
        print(json.dumps({"sending": True}), flush=True)
        start = time.perf_counter()
        tick = 0
        while not stop:
            app.send_batch([(QUEUE, {"i": sent + k}) for k in range(per_tick)])
            sent += per_tick
            tick += 1
            pause = tick * 0.01 - (time.perf_counter() - start)
            if pause > 0:
                time.sleep(pause)
        seconds = time.perf_counter() - start
    print(json.dumps({"rate": sent / seconds, "sent": sent}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--kind", choices=("async", "sync"), default="async")
    parser.add_argument("--retention", type=float, help="the queue's retention (0: no history)")
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--due", type=int, default=15)
    parser.add_argument("--load-rate", type=int, default=0)
    parser.add_argument("--keyed", action="store_true", help="each job sent with a unique key")
    args = parser.parse_args()
    if args.scenario == "produce":
        produce(args)
        return
    if args.scenario == "reset":
        reset(args.dsn, args.schema).close()
        metrics: dict[str, Any] = {}
    else:
        run = {"drain": drain, "send_one": send_one, "send_concurrent": send_concurrent,
               "send_batch": send_batch, "latency": latency,
               "start_after": start_after}[args.scenario]  # fmt: skip
        metrics = run(args)
    print(json.dumps({"conveyor_file": conveyor.__file__, **metrics}), flush=True)


if __name__ == "__main__":
    main()
