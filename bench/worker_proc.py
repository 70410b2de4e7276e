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

import asyncio
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


class LoopLag:
    """How late the worker's event loop runs a callback asked for from another thread, probed
    every ``PROBE`` seconds: a stall of the loop (a blocking call, a long computation) shows
    here, one in the database or on the network does not."""

    PROBE = 0.05

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.worst = 0.0

    def seen(self) -> None:
        """Called on the loop (by a handler): the loop to probe."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            threading.Thread(target=self._probe, daemon=True).start()

    def _probe(self) -> None:
        assert self.loop is not None
        while True:
            ran = threading.Event()
            asked = time.perf_counter()
            self.loop.call_soon_threadsafe(ran.set)
            ran.wait()
            self.worst = max(self.worst, time.perf_counter() - asked)
            time.sleep(self.PROBE)

    def take(self) -> float:
        """The worst lag (ms) since the last take."""
        worst, self.worst = self.worst, 0.0
        return round(1000 * worst, 1)


def report_waits(
    claimed: Counter[float], started: Counter[float], every: float, lag: LoopLag
) -> None:
    """Every ``every`` seconds, print the window's wait percentiles (ms) and start afresh: from
    ``run_at`` to the claim (``p50``..., the database's clock, as the history would say) and to
    the handler's start (``start_p50``...); with the worst lag of the event loop (``loop_lag``,
    ms) and the wall-clock time (``at``), to match a window with the server's log."""
    while True:
        time.sleep(every)
        found: dict[str, float] = {"loop_lag": lag.take(), "at": time.time()}
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
        lag = LoopLag()

        @app.job("bench")
        async def timed(job: Job) -> None:
            started[bucket(time.time() - job.run_at.timestamp())] += 1
            assert job.started_at is not None
            claimed[bucket((job.started_at - job.run_at).total_seconds())] += 1
            lag.seen()

        threading.Thread(
            target=report_waits, args=(claimed, started, every, lag), daemon=True
        ).start()
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
