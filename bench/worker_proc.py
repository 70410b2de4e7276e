"""A benchmark worker process: drain the bench queue (burst) or serve it until SIGTERM.

    python -m bench.worker_proc DSN SCHEMA drain CONCURRENCY
    python -m bench.worker_proc DSN SCHEMA serve CONCURRENCY [EVERY]

Prints one JSON line at the end: attempts run, seconds, peak RSS in MB. Serving with ``EVERY``
(seconds), it also prints, every ``EVERY`` seconds, a JSON line with the percentiles of how long
the jobs that started in that window waited from their ``run_at`` to their claim and to their
handler's start:
the load tests read latency here rather than by sorting the history in the database, a query
that held a snapshot for most of a second and so disturbed what it measured.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time

from conveyor import Conveyor, Job

PERCENTILES = (50, 95, 99)


def report_waits(claimed: list[float], started: list[float], every: float) -> None:
    """Every ``every`` seconds, print the window's wait percentiles (ms) and start afresh: from
    ``run_at`` to the claim (``p50``..., the database's clock, as the history would say) and to
    the handler's start (``start_p50``...)."""
    while True:
        time.sleep(every)
        found: dict[str, float] = {}
        for waits, prefix in ((claimed, ""), (started, "start_")):
            window = waits.copy()
            del waits[: len(window)]  # what the handlers appended meanwhile stays for the next
            window.sort()
            for p in PERCENTILES:
                if window:
                    found[f"{prefix}p{p}"] = 1000 * window[len(window) * p // 100]
        print(json.dumps({"waits": found}), flush=True)


def main() -> None:
    dsn, schema, mode, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    every = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    app = Conveyor(dsn, schema=schema)
    claimed: list[float] = []
    started: list[float] = []

    if every:

        @app.job("bench")
        async def timed(job: Job) -> None:
            started.append(time.time() - job.run_at.timestamp())
            assert job.started_at is not None
            claimed.append((job.started_at - job.run_at).total_seconds())

        threading.Thread(target=report_waits, args=(claimed, started, every), daemon=True).start()
    else:

        @app.job("bench")
        async def noop(job: Job) -> None:
            return None

    start = time.perf_counter()
    if mode == "drain":
        ran = app.drain(concurrency=concurrency)
    else:
        ran = app.run_worker(concurrency=concurrency, poll_interval=5.0)
    seconds = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"ran": ran, "seconds": seconds, "rss_mb": rss_mb}), flush=True)


if __name__ == "__main__":
    main()
