"""The send's fast-path statement alone, with no client: what its NOTIFY costs concurrent senders.

    .venv/bin/python -m bench.send_statement [--dsn DSN] [--clients 8] [--rounds 4] [--seconds 5]

pgbench (``-M prepared``) runs ``job_insert_plain`` as the query file has it, on a fresh schema,
twice per round, alternating: quiet (a send on a pooled connection with no worker waiting: the
idle mark's lock taken shared, no NOTIFY) and not quiet (a NOTIFY in each commit, as every send
did before the idle marks). A notifying commit holds a cluster-wide lock through its WAL flush,
so the gap grows with the number of concurrent senders. Prints the medians and every run.
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

import psycopg

from bench.run import run_pgbench
from conveyor import Conveyor
from conveyor._store.queries import queries
from conveyor.testing import LOCAL_TEST_DSN

SCHEMA = "bench_send_statement"


def literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "'" + str(value).replace("'", "''") + "'"


def script(quiet: bool) -> str:
    """job_insert_plain with its parameters written in (a new id each time)."""
    params = {
        "queue": "q", "data": '{"i": 1}', "options": None, "defaults": "{}", "now": None,
        "meta": None, "channel": f"conveyor:{SCHEMA}", "quiet": quiet,
    }  # fmt: skip
    text = queries(SCHEMA)["job_insert_plain"].sql.replace("%(id)s::uuid", "gen_random_uuid()")
    for name, value in params.items():
        text = text.replace(f"%({name})s", literal(value))
    # pgbench reads ":name" as a variable: the channel's colon is written as an escape.
    return text.replace("'conveyor:", "E'conveyor\\x3a") + ";\n"


def tps(dsn: str, text: str, clients: int, seconds: int) -> float:
    options = ["-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(seconds)]
    out = run_pgbench(dsn, text, options)
    return float(next(line for line in out.splitlines() if line.startswith("tps")).split()[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default=os.environ.get("CONVEYOR_BENCH_DSN", LOCAL_TEST_DSN))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    with Conveyor(args.dsn, schema=SCHEMA) as app:
        app.migrate()
        app.send("q", {})  # the queue exists, as for any send but a queue's first
    runs: dict[str, list[float]] = {"quiet": [], "notifying": []}
    try:
        for _ in range(args.rounds):
            runs["quiet"].append(tps(args.dsn, script(True), args.clients, args.seconds))
            runs["notifying"].append(tps(args.dsn, script(False), args.clients, args.seconds))
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    for name, found in runs.items():
        print(
            f"{args.clients} clients, {name}: median {statistics.median(found):,.0f} tps "
            f"(runs {', '.join(f'{x:,.0f}' for x in found)})"
        )
    quiet, notifying = (statistics.median(runs[k]) for k in ("quiet", "notifying"))
    print(f"quiet / notifying: {quiet / notifying:.2f}x")


if __name__ == "__main__":
    main()
