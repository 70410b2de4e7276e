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
from collections import Counter

from conveyor import Conveyor, Job

PERCENTILES = (50, 95, 99)


def bucket(seconds: float) -> float:
    """A wait in ms, to 0.1 ms below 100 ms and to 1 ms above: a minute at 20,000 jobs/s fits in
    a few thousand counters, where a list of every wait took tens of MB of the worker's memory."""
    ms = 1000 * seconds
    return round(ms, 1) if ms < 100 else float(round(ms))


def percentiles(counts: Counter[float]) -> dict[str, float]:
    """The PERCENTILES of the waits counted."""
    total, seen, found = counts.total(), 0, {}
    wanted = [(p, total * p / 100) for p in PERCENTILES]
    for ms in sorted(counts):
        seen += counts[ms]
        while wanted and seen >= wanted[0][1]:
            found[f"p{wanted.pop(0)[0]}"] = ms
    return found


def report_waits(claimed: Counter[float], started: Counter[float], every: float) -> None:
    """Every ``every`` seconds, print the window's wait percentiles (ms) and start afresh: from
    ``run_at`` to the claim (``p50``..., the database's clock, as the history would say) and to
    the handler's start (``start_p50``...)."""
    while True:
        time.sleep(every)
        found: dict[str, float] = {}
        for counts, prefix in ((claimed, ""), (started, "start_")):
            # The handlers count on the event loop's thread meanwhile: take a copy, then take
            # away what was copied, so counts added in between stay for the next window (one
            # that lands inside subtract's read and write of the same bucket can be lost: a
            # count or two a window, nothing a percentile shows).
            window = counts.copy()
            counts.subtract(window)
            found.update({prefix + k: v for k, v in percentiles(+window).items()})
        print(json.dumps({"waits": found}), flush=True)


def main() -> None:
    dsn, schema, mode, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    every = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    app = Conveyor(dsn, schema=schema)
    claimed: Counter[float] = Counter()
    started: Counter[float] = Counter()

    if every:

        @app.job("bench")
        async def timed(job: Job) -> None:
            started[bucket(time.time() - job.run_at.timestamp())] += 1
            assert job.started_at is not None
            claimed[bucket((job.started_at - job.run_at).total_seconds())] += 1

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
