"""A worker process for the A/B benchmark (bench.ab); it imports whichever ``conveyor`` its
``PYTHONPATH`` names, so one script drives the baseline tree and the current one alike.

    python -m bench.ab_worker DSN SCHEMA drain async|sync CONCURRENCY
    python -m bench.ab_worker DSN SCHEMA serve async CONCURRENCY

Both print the imported ``conveyor.__file__`` first. ``drain`` then prints ``ready`` once the
app is built, waits for a line on stdin, drains the ``bench`` queue and prints one JSON line:
attempts run, wall-clock start and end (``time.time()``, so two processes can be put on one time
line), handler calls.

``serve`` runs a worker (library defaults: poll interval, heartbeat) until SIGTERM. A job whose
data has a ``probe`` or ``due`` key gets one JSON line on stdout when its handler starts, with the
wall-clock time; other jobs (a producer's load) print nothing. At exit one JSON summary line.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import conveyor
from conveyor import Conveyor, Job


def emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def main() -> None:
    dsn, schema, mode, kind, concurrency = sys.argv[1:6]
    app = Conveyor(dsn, schema=schema)
    calls = 0
    emit({"conveyor_file": conveyor.__file__})

    if mode == "serve":

        @app.job("bench")
        async def traced(job: Job) -> None:
            started = time.time()
            nonlocal calls
            calls += 1
            data = job.data
            if "probe" in data or "due" in data:
                emit({**data, "started": started})

        ran = app.run_worker(concurrency=int(concurrency))
        emit({"ran": ran, "calls": calls})
        return

    if kind == "sync":

        @app.job("bench")
        def noop_sync(job: Job) -> None:
            nonlocal calls
            calls += 1

    else:

        @app.job("bench")
        async def noop(job: Job) -> None:
            nonlocal calls
            calls += 1

    emit({"ready": True})
    sys.stdin.readline()
    start = time.time()
    ran = app.drain(concurrency=int(concurrency))
    end = time.time()
    app.close()
    emit({"ran": ran, "calls": calls, "start": start, "end": end})


if __name__ == "__main__":
    main()
