"""A benchmark worker process: drain the bench queue (burst) or serve it until SIGTERM.

    python -m bench.worker_proc DSN SCHEMA drain CONCURRENCY
    python -m bench.worker_proc DSN SCHEMA serve CONCURRENCY

Prints one JSON line at the end: attempts run, seconds, peak RSS in MB.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from conveyor import Conveyor, Job


def main() -> None:
    dsn, schema, mode, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    app = Conveyor(dsn, schema=schema)

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
